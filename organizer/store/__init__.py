"""The library database: ORM models, engine and migrations, and named queries."""

"""Alembic environment: runs on the connection organizer hands over (see organizer.store.db).

Imports only the ORM metadata. Migrations run inside the caller's transaction, so on SQLite
(where organizer issues BEGIN itself) an interrupted migration rolls back as a whole.
"""

from alembic import context

from organizer.store.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic` run by hand: open the database named in alembic.ini
    from organizer.store.db import create_engine_for

    engine = create_engine_for(config.get_main_option("sqlalchemy.url"))
    connection = engine.connect()
    connection.begin()
    own_connection = True
else:
    own_connection = False

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()

if own_connection:
    connection.commit()
    connection.close()

"""organizer: organise large photo folders with CLIP embeddings.

The public Python API is :class:`Library` with :func:`resolve_settings`; importing this
package loads neither torch nor any model.
"""

__version__ = "0.1.0"

__all__ = ["Library", "Settings", "__version__", "resolve_settings"]


def __getattr__(name: str) -> object:
    # Lazy, so that `import organizer` (and `organizer --help`) stays light.
    if name == "Library":
        from organizer.library import Library

        return Library
    if name in ("Settings", "resolve_settings"):
        from organizer import config

        return getattr(config, name)
    raise AttributeError(f"module 'organizer' has no attribute {name!r}")

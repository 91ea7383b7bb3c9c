"""``organizer serve``: a local web app over a library (search, images, clusters, duplicates,
status) and its JSON API. Needs the ``serve`` extra (Starlette, uvicorn, python-multipart)."""

from __future__ import annotations

import socket
import string
import threading
import webbrowser
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import quote

from organizer.errors import OrganizerError
from organizer.redact import screen

if TYPE_CHECKING:
    from organizer.library import Library
    from organizer.serve.service import Service

MIN_TOKEN = 12
# URL-safe: the token travels in the printed link and in a Bearer header as it is.
TOKEN_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_.~")


class ServeError(OrganizerError):
    """The server cannot start (its extra is missing, the address is taken)."""


def check_installed() -> None:
    try:
        import multipart  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ServeError(
            "organizer serve needs its extra: pip install 'organizer[serve]'"
        ) from None


def listen(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free one), or a one-line error."""
    try:
        family, kind, proto, _, _ = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )[0]
        # proto must say TCP: asyncio sets TCP_NODELAY on accepted sockets only then, and
        # without it every keep-alive response waits ~40 ms for a delayed ACK (Nagle).
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def serve(
    lib: Library,
    host: str,
    port: int,
    token: str | None,
    open_browser: bool,
    announce: Callable[[str], None],
    allow_changes: bool = False,
) -> None:
    """Serve ``lib`` until interrupted; ``announce`` hears the address to open. Read-only
    unless ``allow_changes`` (the duplicates page's actions)."""
    check_installed()
    import uvicorn

    from organizer.serve.app import create_app
    from organizer.serve.service import Service

    service = Service(lib)
    sock = listen(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/" + (f"?token={quote(token, safe='')}" if token else "")
    config = uvicorn.Config(
        create_app(service, host, token, bound, allow_changes),
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(config)
    threading.Thread(target=_warm, args=(service, announce), daemon=True).start()
    announce(f"serving {lib.home.name} at {url}  (Ctrl-C stops)")
    if allow_changes:
        announce("changes are allowed: the duplicates page's actions change the library")
    if open_browser:
        webbrowser.open(url)
    server.run(sockets=[sock])


def _warm(service: Service, announce: Callable[[str], None]) -> None:
    """Load the index and the model before the first query needs them."""
    try:
        service.warm_up()
    except OrganizerError as exc:
        announce(f"warning: {exc}")
    except Exception as exc:
        announce(f"warning: could not load the model yet: {type(exc).__name__}: {screen(str(exc))}")

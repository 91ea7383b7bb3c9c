"""The server's front door, an ASGI middleware in front of every route.

- ``Host`` must name the server (DNS rebinding: a page of another site that resolves its own
  name to 127.0.0.1 would otherwise read the library): else 400.
- With a token, every request carries ``Authorization: Bearer TOKEN`` or the cookie that
  opening ``/?token=TOKEN`` once sets (the link printed at start): else 401.
- A POST from a page of another origin is refused (403).
- A change request (any request but a GET or HEAD, except the search by picture) is refused
  (403, one line each) unless the server was started with ``--allow-changes``, it names its
  page's origin (``Origin``, or failing it ``Referer``; one with neither is refused), and it
  carries the page's CSRF token in ``X-CSRF-Token`` (see :class:`ChangeCheck`).
- Every response carries a Content-Security-Policy (scripts and styles from the server only,
  nothing inline) and headers against sniffing, framing and leaking the URL as a referrer.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "organizer_session"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})
CSRF_HEADER = b"x-csrf-token"
# POSTs that only read: a search by picture sends the picture in its body.
READING_POSTS = frozenset({"/api/search"})
READ_ONLY = "this server is read-only: start it with organizer serve --allow-changes"
NO_ORIGIN = "a change must come from this server's page (no Origin or Referer was sent)"
CROSS_ORIGIN = "cross-origin request refused"
NO_CSRF = "a change needs the page's X-CSRF-Token: reload the page and try again"
BAD_CSRF = "the X-CSRF-Token is not this server's (it was restarted?): reload the page"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address literal (not a name that merely starts "127.")."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name of a Host header, without its port: ``[::1]:8765`` -> ``::1``."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class ChangeCheck:
    """Whether the server may change the library, and the CSRF token its pages carry.

    The token is an HMAC of the session (the token's cookie value, or "" without a token)
    under a random secret made when the server starts: a page of this server can read it
    from its ``<meta name="csrf-token">``, a page of another site cannot (the same-origin
    policy keeps our pages from it, and the Host check keeps it from renaming itself ours).
    A restart makes a new secret, so an old page's token no longer works.
    """

    def __init__(self, allowed: bool, token: str | None = None):
        self.allowed = allowed
        self._secret = secrets.token_bytes(32)
        session = _session_value(token) if token else ""
        self._token = hmac.new(
            self._secret, b"organizer-csrf:" + session.encode(), hashlib.sha256
        ).hexdigest()

    def page_token(self) -> str | None:
        """The token a page puts in its ``<meta name="csrf-token">``; None when read-only."""
        return self._token if self.allowed else None

    def refusal(self, headers: dict[bytes, bytes], host: str) -> str | None:
        """Why a change request is refused (one line), or None when it may go on."""
        if not self.allowed:
            return READ_ONLY
        origin = headers.get(b"origin")
        if origin is not None:
            if not _same_origin(origin, host):
                return CROSS_ORIGIN
        else:
            referer = headers.get(b"referer")
            if referer is None:
                return NO_ORIGIN
            if not _same_origin_referer(referer, host):
                return CROSS_ORIGIN
        sent = headers.get(CSRF_HEADER)
        if not sent:
            return NO_CSRF
        if not hmac.compare_digest(sent, self._token.encode()):
            return BAD_CSRF
        return None


def is_change(scope: Scope) -> bool:
    """Whether a request may change something: any method but GET and HEAD, except the
    POSTs that only read. A route added later is a change until said otherwise."""
    if scope["method"] in ("GET", "HEAD"):
        return False
    return not (scope["method"] == "POST" and scope["path"] in READING_POSTS)


class Guard:
    """See the module's docstring. ``bound`` is the host the server listens on; ``changes``
    says whether change requests are allowed (by default none is)."""

    def __init__(
        self,
        app: ASGIApp,
        bound: str,
        token: str | None,
        port: int = 0,
        changes: ChangeCheck | None = None,
    ):
        self.app = app
        self.token = token
        # Cookies ignore ports: one name per port, so two servers on a host keep theirs.
        self.cookie = f"{COOKIE}_{port}"
        self.any_host = bound in WILDCARD_HOSTS
        self.hosts = set(LOOPBACK_NAMES) | {bound.strip("[]").lower()}
        self.session = _session_value(token) if token else None
        self.changes = changes or ChangeCheck(False, token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        host = headers.get(b"host", b"").decode("latin-1").strip().lower()
        if not self.any_host and host_name(host) not in self.hosts:
            await _plain(send, 400, "unknown Host: open the address organizer serve printed")
            return
        origin = headers.get(b"origin")
        if scope["method"] == "POST" and origin is not None and not _same_origin(origin, host):
            await _plain(send, 403, CROSS_ORIGIN)
            return
        if self.token is not None and not self._allowed(scope, headers):
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            if scope["method"] == "GET" and hmac.compare_digest(
                query.get("token", "").encode(), self.token.encode()
            ):
                await self._set_cookie_and_redirect(scope, query, send)
                return
            await _plain(send, 401, "a token is needed: open the link organizer serve printed")
            return
        if is_change(scope):
            refused = self.changes.refusal(headers, host)
            if refused is not None:
                await _plain(send, 403, refused)
                return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_secured)

    def _allowed(self, scope: Scope, headers: dict[bytes, bytes]) -> bool:
        assert self.token is not None and self.session is not None
        # RFC 7235: the scheme is case-insensitive ("bearer", "BEARER"), spaces follow it.
        scheme, _, credentials = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), self.token.encode()
        ):
            return True
        for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
            name, _, value = part.strip().partition("=")
            if name == self.cookie and hmac.compare_digest(value.encode(), self.session.encode()):
                return True
        return False

    async def _set_cookie_and_redirect(self, scope: Scope, query: dict, send: Send) -> None:
        """The printed link's token becomes an HttpOnly, same-site cookie; the address bar
        (and the history) keeps the page without the token."""
        rest = urlencode({k: v for k, v in query.items() if k != "token"})
        # The path as sent (still percent-encoded), and only a path of this server: no
        # "//other.host", no control characters.
        path = scope.get("raw_path", b"/").decode("latin-1")
        if not path.startswith("/") or path.startswith("//") or not path.isprintable():
            path = "/"
        location = path + (f"?{rest}" if rest else "")
        cookie = f"{self.cookie}={self.session}; Path=/; HttpOnly; SameSite=Strict"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", location.encode("latin-1", "replace")),
                    (b"set-cookie", cookie.encode()),
                    (b"content-length", b"0"),
                    *SECURITY_HEADERS,
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})


def _session_value(token: str) -> str:
    """The cookie's value: derived from the token, so the cookie jar never holds the token."""
    return hmac.new(token.encode(), b"organizer-session", hashlib.sha256).hexdigest()


def _same_origin(origin: bytes, host: str) -> bool:
    """Whether an Origin header names this server ("null", a sandboxed or hidden origin,
    does not)."""
    value = origin.decode("latin-1").lower()
    return value in (f"http://{host}", f"https://{host}")


def _same_origin_referer(referer: bytes, host: str) -> bool:
    try:
        parts = urlsplit(referer.decode("latin-1"))
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host


async def _plain(send: Send, status: int, text: str) -> None:
    body = (text + "\n").encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

"""Passwords are never shown: the one place that knows how to find and hide them.

A password is found by its position in a URL (``scheme://user:PASSWORD@host``, where the
credentials end at the last ``@`` before the host, as a password may hold an unencoded
``@``, ``:``, ``/``, ``#``, ``?`` or space), or by its name in the query (``?password=``,
the name decoded as libpq does: ``?pass%77ord=``). The passwords of the URLs organizer has
parsed are also remembered:

- text from outside organizer (a database server's or driver's message, an unexpected
  error) goes through :func:`screen`, which withholds the whole text when it quotes a
  remembered password: masking the password inside it would spell the password out
  whenever it is a word the text holds anyway (``password authentication failed``);
- every line organizer prints goes through :func:`hide_passwords`, which hides URL
  passwords by position and, as a second guard, remembered passwords that hold a character
  other than a letter. A password made of letters only is not masked there: organizer's own
  sentences are words, and masking ``library`` in ``no library in the database`` would
  give the password away.

Nothing is ever hidden by a class of characters: a password of ``p`` must not turn every
``p`` of a message into ``***``.

Standard library only, so that the lowest layers (console output) can use it.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from urllib.parse import quote, unquote

MASK = "***"
# Shorter remembered passwords are matched as whole tokens only: matched anywhere, they
# would be found in ordinary words (and masked, spell themselves out).
MIN_REMEMBERED = 4

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_QUERY_PARAM = re.compile(r"([?&])([^=&\s]*)=([^&\s]*)")
WITHHELD = "[the message is withheld: it quotes the database password]"
_remembered: set[str] = set()
_lock = threading.Lock()


@dataclass(frozen=True)
class Credentials:
    """Where a URL's credentials lie: ``text[user_start:at]`` is ``user[:password]``."""

    user_start: int
    at: int  # index of the "@" that ends them; -1 when the URL has none
    colon: int  # index of the ":" before the password; -1 when there is no password

    @property
    def password_span(self) -> tuple[int, int] | None:
        return (self.colon + 1, self.at) if self.colon >= 0 else None


def credentials(url: str) -> Credentials:
    """Where the user and password of ``url`` (``scheme://...``) are, by position.

    The credentials end at the last ``@`` of the URL: the host, port, database and query
    that follow hold none (an ``@`` in a query value must be written ``%40``). The user ends
    at the first ``:``.
    """
    match = _SCHEME.match(url)
    start = match.end() if match else 0
    at = url.rfind("@", start)
    if at < 0:
        return Credentials(start, -1, -1)
    colon = url.find(":", start, at)
    return Credentials(start, at, colon)


def split_url(url: str) -> tuple[str | None, str | None, str]:
    """``(user, password, url without them)``, decoded: ``%40`` in a password is ``@``."""
    found = credentials(url)
    if found.at < 0:
        return None, None, url
    rest = url[: found.user_start] + url[found.at + 1 :]
    if found.colon < 0:
        return unquote(url[found.user_start : found.at]), None, rest
    user = unquote(url[found.user_start : found.colon])
    return user, unquote(url[found.colon + 1 : found.at]), rest


def remember(password: str | None) -> None:
    """Keep ``password`` (as given and URL-encoded) out of later output (see the module)."""
    if not password:
        return
    with _lock:
        _remembered.update({password, quote(password, safe=""), quote(password)})


def _quotes(text: str, secret: str) -> bool:
    """Whether ``text`` holds ``secret``: anywhere when it is long enough not to occur by
    chance, else only as a whole token (a password of ``ab`` must not match ``cab``)."""
    if len(secret) >= MIN_REMEMBERED:
        return secret in text
    return re.search(rf"(?<![\w]){re.escape(secret)}(?![\w])", text) is not None


def screen(text: str) -> str:
    """Text from outside organizer (a server's or driver's message, an exception), fit to
    show: :data:`WITHHELD` when it quotes a remembered password, else with the password of
    every URL in it hidden."""
    with _lock:
        secrets = list(_remembered)
    if any(_quotes(text, secret) for secret in secrets):
        return WITHHELD
    return hide_passwords(text)


def redact_url(url: str) -> str:
    """``url`` with its password (by position, and ``?password=``) replaced by ***."""
    span = credentials(url).password_span
    if span is not None:
        url = url[: span[0]] + MASK + url[span[1] :]
    return _hide_query_passwords(url)


def _hide_query_passwords(text: str) -> str:
    """``password=VALUE`` query parameters with VALUE hidden, the name decoded first (libpq
    and SQLAlchemy take ``pass%77ord`` for ``password``)."""

    def hide(match: re.Match[str]) -> str:
        if unquote(match[2]).lower() != "password":
            return match[0]
        return f"{match[1]}{match[2]}={MASK}"

    return _QUERY_PARAM.sub(hide, text)


def hide_passwords(text: str) -> str:
    """``text`` with the password of every URL in it, and every remembered password that
    holds a character other than a letter (long enough not to occur by chance), replaced by
    ***.

    A URL inside a sentence has no clear end (a password may hold spaces), so its
    credentials are taken to end at the last ``@`` of the line: this may hide more than the
    password, never less.
    """
    with _lock:
        secrets = sorted(_remembered, key=len, reverse=True)
    for secret in secrets:
        if len(secret) >= MIN_REMEMBERED and not secret.isalpha():
            text = text.replace(secret, MASK)
    return "\n".join(_hide_in_line(line) for line in text.split("\n"))


def _hide_in_line(line: str) -> str:
    out, pos = [], 0
    for match in _SCHEME.finditer(line):
        if match.start() < pos:
            continue  # inside the credentials of an earlier URL
        at = line.rfind("@", match.end())
        colon = line.find(":", match.end(), at) if at >= 0 else -1
        if colon < 0 or line.find("://", match.end(), colon) >= 0:
            continue  # no password here (a port's colon comes after any "@")
        out.append(line[pos : colon + 1] + MASK)
        pos = at
    out.append(line[pos:])
    return _hide_query_passwords("".join(out))

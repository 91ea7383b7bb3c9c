"""Passwords in library URLs: found by position, never by a class of characters."""

from __future__ import annotations

import pytest

from organizer import console
from organizer.errors import LibraryURLError
from organizer.redact import WITHHELD, hide_passwords, redact_url, remember, screen, split_url
from organizer.store.db import library_url, redact

# Each holds what an unencoded password may: @ : / % # ? p and spaces.
PASSWORDS = ["p@ssw0rd-TAIL", "pa:ss/w%rd#x?y z@TAIL p", "a b", "#?/:"]


def pieces(password: str) -> list[str]:
    """The parts of a password a bad split would show (text between its odd characters)."""
    parts = [password]
    for sep in "@:/%#? ":
        parts = [p for part in parts for p in part.split(sep)]
    return [p for p in parts if len(p) >= 3]


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize(
    "template",
    [
        "postgresql://alice:{}@/photos?host=/run/pg",
        "postgresql://alice:{}@db.example:5433/photos",
        "postgres://alice:{}@db.example/photos?sslmode=require",
    ],
)
def test_an_unencoded_password_is_split_at_the_last_at_and_never_shown(template, password):
    url = template.format(password)
    parsed = library_url(url)
    assert (parsed.username, parsed.password, parsed.database) == ("alice", password, "photos")
    assert parsed.host in (None, "db.example")
    for shown in (redact(url), redact(parsed), redact_url(url)):
        assert "alice:***@" in shown
        assert not any(piece in shown for piece in pieces(password)), shown


def test_an_encoded_password_is_decoded_as_libpq_does():
    user, password, rest = split_url("postgresql://al%40ice:p%40ss%3Aw%2F@h/db")
    assert (user, password, rest) == ("al@ice", "p@ss:w/", "postgresql://h/db")
    assert library_url("postgresql://al%40ice:p%40ss%3Aw%2F@h/db").password == "p@ss:w/"


def test_urls_without_a_password_are_shown_as_they_are():
    for url in ("postgresql://alice@/photos?host=/run/pg", "postgresql://h:5432/db"):
        assert redact_url(url) == url
        assert hide_passwords(f"error: {url}: refused") == f"error: {url}: refused"


def test_a_password_in_the_query_is_hidden():
    assert redact_url("postgresql:///db?host=/x&password=s3cr3t") == (
        "postgresql:///db?host=/x&password=***"
    )


def test_a_remembered_password_is_hidden_whole_wherever_it_appears():
    remember("p@ssw0rd-TAIL-remembered")
    line = hide_passwords("FATAL: role alice (p@ssw0rd-TAIL-remembered) password authentication")
    assert line == "FATAL: role alice (***) password authentication"


@pytest.mark.parametrize("password", ["library", "error", "password", "cannot", "photos"])
def test_a_password_that_is_a_word_of_a_message_is_never_spelled_out(password):
    """Masking it inside a sentence would give it away (`***: cannot use ...` for "error")."""
    remember(password)
    ours = f"error: cannot use the library database photos on /run/pg: {screen('it is down')}"
    assert hide_passwords(ours) == ours  # organizer's own words stay as they are
    theirs = f"{password} authentication failed for user alice"
    assert screen(theirs) == WITHHELD  # the server's text: withheld whole, nothing masked
    assert "***" not in hide_passwords(f"error: cannot use the library: {screen(theirs)}")


def test_a_short_password_withholds_a_message_only_where_it_is_a_whole_word():
    remember("xq")
    assert screen("connection refused by xq-host") == WITHHELD
    assert screen("the xqz server refused") == "the xqz server refused"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # a password given twice would be used as which? refused, and neither shown
        (
            "postgresql://su@/libs?host=/x&password=abcd&password=efgh&password=ijkl",
            "gives password more than once",
        ),
        ("postgresql://u:pw-secret@h:abc/db", "not a database URL"),  # a port not a number
        ("postgresql://u@h?pass%77ord=xyz", "names no database"),  # key encoded as libpq reads
    ],
)
def test_odd_urls_are_refused_without_their_password(url, shown):
    with pytest.raises(LibraryURLError) as refused:
        library_url(url)
    message = str(refused.value)
    assert shown in message
    for secret in ("abcd", "efgh", "ijkl", "pw-secret", "xyz"):
        assert secret not in message, message


def test_a_short_password_never_masks_letters_of_a_message():
    """The old masking turned every "p" into *** for the password "p"."""
    remember("p")
    text = "cannot use the library database photos on /run/pg: password authentication failed"
    assert hide_passwords(text) == text


@pytest.mark.parametrize("password", PASSWORDS)
def test_a_url_inside_a_sentence_loses_its_password(password):
    text = f"error: not a database URL: postgresql://alice:{password}@/photos (see --help)"
    shown = hide_passwords(text)
    assert "postgresql://alice:***@/photos (see --help)" in shown
    assert not any(piece in shown for piece in pieces(password))


def test_warnings_and_errors_on_stderr_are_hidden(capsys):
    remember("warned-secret-1")
    console.show_warning(
        "index at postgresql://bob:warned-secret-1@h/db is stale", UserWarning, "", 0
    )
    console.err("error: postgresql://bob:x y@z@h/db")
    err = capsys.readouterr().err
    assert "warned-secret-1" not in err and "x y@z" not in err and err.count("***") == 2

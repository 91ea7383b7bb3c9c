"""A throwaway PostgreSQL server for tests: initdb in a temporary folder, unix socket only.

PostgreSQL refuses to run as root, so under root (as in CI) the server runs as the
``postgres`` system user (Debian's package makes it) or else ``nobody``, through setpriv.
Each test gets a database of its own; the server is stopped and its folder removed at the
end of the session.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "organizer"
PASSWORD_USER, PASSWORD = "secretive", "Tr0ub4dor-and-3"
PASSWORD_GROUP = "passworded"


def find_binary(name: str) -> str | None:
    """A PostgreSQL server binary: on PATH, or in Debian's versioned folder (newest first)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return candidates[-1] if candidates else None


class PgServer:
    """One server for the whole test session."""

    def __init__(self) -> None:
        self.initdb = find_binary("initdb")
        self.pg_ctl = find_binary("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self.folder = Path(tempfile.mkdtemp(prefix="organizer-pg-"))
        self.data = self.folder / "data"
        self.socket_dir = self.folder
        self._user = self._server_user()
        self._names = itertools.count(1)

    @staticmethod
    def _server_user() -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        raise RuntimeError("running as root and no unprivileged user to run PostgreSQL as")

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self._user is not None:
            cmd = [
                "setpriv",
                f"--reuid={self._user.pw_uid}",
                f"--regid={self._user.pw_gid}",
                "--clear-groups",
                *cmd,
            ]
        subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=self.folder)

    def start(self, durable: bool = False) -> PgServer:
        """Start the server; ``durable`` keeps PostgreSQL's fsync (benchmarks), tests skip it."""
        if self._user is not None:
            os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)
        self._run(
            self.initdb,
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        # Members of one group sign in with a password (to test that it is never shown); all
        # else trusts.
        (self.data / "pg_hba.conf").write_text(
            f"local all +{PASSWORD_GROUP} scram-sha-256\nlocal all all trust\n"
        )
        self._options = f"-c listen_addresses='' -k {self.socket_dir} -c max_connections=200"
        if not durable:
            self._options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self.resume()
        self.admin(f"CREATE ROLE {PASSWORD_GROUP} NOLOGIN")
        self.password_role(PASSWORD_USER, PASSWORD)
        return self

    def password_role(self, name: str, password: str) -> None:
        """A role that must sign in with ``password`` (any characters)."""
        from psycopg import sql

        self.admin(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                sql.Identifier(name), sql.Literal(password), sql.Identifier(PASSWORD_GROUP)
            )
        )

    def pause(self) -> None:
        """Shut the server down (its clients lose their connections); the data stays."""
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start the server (again, after :meth:`pause`)."""
        log = str(self.folder / "log")
        self._run(self.pg_ctl, "-D", str(self.data), "-o", self._options, "-w", "-l", log, "start")

    def url(self, database: str, user: str = SUPERUSER, password: str | None = None) -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql+psycopg://{auth}@/{database}?host={self.socket_dir}"

    def admin(self, statement) -> None:
        import psycopg

        with psycopg.connect(
            host=str(self.socket_dir), dbname="postgres", user=SUPERUSER, autocommit=True
        ) as conn:
            conn.execute(statement)

    def new_database(self, owner: str = SUPERUSER) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL (for ``owner``)."""
        name = f"lib{next(self._names)}"
        self.admin(f'CREATE DATABASE {name} OWNER "{owner}"')
        return self.url(name, owner, PASSWORD if owner == PASSWORD_USER else None)

    def stop(self) -> None:
        try:
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

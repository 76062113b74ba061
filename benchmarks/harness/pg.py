"""A throwaway PostgreSQL cluster for the tests and the ingestion benchmark.

:class:`PostgresCluster` runs ``initdb`` and ``pg_ctl`` from the PostgreSQL 15 server binaries
(Debian's ``postgresql-15``, which ``make test`` installs) in a fresh temporary directory: trust
authentication, a free loopback port, its own unix socket directory, fsync off. ``initdb`` refuses
to run as root, so as root every command runs as the ``postgres`` user (``runuser``), which then
owns the directory. :meth:`PostgresCluster.stop` stops the server and deletes everything.

Nothing here skips: when PostgreSQL cannot start, :class:`PostgresUnavailable` says why.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PostgresCluster", "PostgresUnavailable", "find_bindir"]

CANDIDATE_BINDIRS = ("/usr/lib/postgresql/15/bin",)
SUPERUSER = "postgres"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL could not be found or started; the message says what to install or look at."""


def find_bindir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` are: ``$PG_BINDIR``, Debian's PostgreSQL 15, ``pg_config``, PATH."""
    candidates = [os.environ.get("PG_BINDIR", ""), *CANDIDATE_BINDIRS]
    if shutil.which("pg_config"):
        result = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(result.stdout.strip())
    found = shutil.which("initdb")
    if found:
        candidates.append(str(Path(found).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql-15 "
        "(make test does), or set PG_BINDIR"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """One running PostgreSQL server in a temporary directory; a context manager."""

    def __init__(self, *, max_connections: int = 300) -> None:
        self.bindir = find_bindir()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                self._owner = pwd.getpwnam(SUPERUSER)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root, and there is no {SUPERUSER!r} user to run PostgreSQL as "
                    "(Debian's postgresql-common creates it)"
                ) from None
        self.max_connections = max_connections
        self.base = Path(tempfile.mkdtemp(prefix="overhead-pg-"))
        self.data = self.base / "data"
        self.sockets = self.base / "sockets"
        self.log = self.base / "server.log"
        self.port = 0
        self._databases = 0

    # -- commands --------------------------------------------------------------------------------

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [*(["runuser", "-u", SUPERUSER, "--"] if self.as_root else []), *argv]
        # cwd: a directory the postgres user may enter (the caller's may be root's own, mode 700).
        result = subprocess.run(
            command, cwd=self.base, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
                + self._log_tail()
            )
        return result

    def _log_tail(self) -> str:
        try:
            return "\nserver log:\n" + self.log.read_text()[-3000:]
        except OSError:
            return ""

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> PostgresCluster:
        """initdb, then start on a free port (a few tries: another process may take the port)."""
        self.sockets.mkdir()
        if self.as_root:
            for path in (self.base, self.sockets):
                os.chown(path, self._owner.pw_uid, self._owner.pw_gid)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C",
        )
        last: PostgresUnavailable | None = None
        for _ in range(3):
            self.port = _free_port()
            options = (
                f"-k {self.sockets} -h 127.0.0.1 -p {self.port} -F "
                f"-c max_connections={self.max_connections} -c synchronous_commit=off"
            )
            try:
                self._run(
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    options,
                    "start",
                    timeout=90,
                )
                return self
            except PostgresUnavailable as exc:
                last = exc
        raise last or PostgresUnavailable("PostgreSQL did not start")

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- databases -------------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` (psycopg 3, TCP on loopback, trust authentication)."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a fresh name unless given); returns its URL."""
        import psycopg

        if name is None:
            self._databases += 1
            name = f"test_{os.getpid()}_{self._databases}_{time.monotonic_ns() % 10**6}"
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of ``url``, closing whatever connections it still has."""
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database}"

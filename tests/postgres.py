"""A throwaway PostgreSQL server for the store's tests: Debian's binaries, a data folder under pytest's temp
folder, loopback only, trust auth, fsync off (nothing here must survive the session).

`make test` installs the server (Debian's postgresql package) when `initdb` is missing. As root (CI, this
project's machines) the server runs as the `postgres` user the package creates: PostgreSQL refuses root.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
from pathlib import Path

_BIN_GLOB = "/usr/lib/postgresql/*/bin"


class PostgresMissing(RuntimeError):
    pass


def _bin_dir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob(_BIN_GLOB), key=lambda p: int(Path(p).parent.name))
    if not versions:
        raise PostgresMissing("PostgreSQL's server is not installed (no pg_ctl on PATH or under "
                              f"{_BIN_GLOB}). Fix: `make postgres` (make test runs it), or "
                              "apt-get install postgresql")
    return Path(versions[-1])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """One server for the test session; `new_database()` gives each test its own empty database."""

    def __init__(self, folder: Path):
        """`folder`: an empty folder the server's user can reach (pytest's own temp tree is private to root)."""
        self.folder, self.bin, self.port = folder, _bin_dir(), _free_port()
        self._names = itertools.count(1)
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_user:
            shutil.chown(folder, "postgres")

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self._as_user, str(self.bin / tool), *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}")

    def start(self) -> PostgresServer:
        data = self.folder / "data"
        self._run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        options = f"-k {self.folder} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off " \
                  "-c full_page_writes=off -c synchronous_commit=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(data), "-o", options, "-l", str(self.folder / "server.log"), "-w", "start")
        return self

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The SQLAlchemy URL of a new, empty database."""
        import psycopg

        name = f"t{next(self._names)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

"""The store's database: any SQLAlchemy URL (SQLite by default, WAL mode), upgraded when opened; one session
scope owns commit. Every part of the store (results.store) works through one `Database`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from results import migrate
from results.busy import LOCK_POLL_S, wait_limit_s, waiting
from sweeps.spec import driver_url


class Database:
    """One engine and its sessions. `lock_wait_s`: how long a call waits while another process holds the store
    locked (default $QLORA_SWEEP_STORE_WAIT_S, else 300 s; results.busy)."""

    def __init__(self, url: str, lock_wait_s: float | None = None):
        url = driver_url(url)
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.url, self.lock_wait_s = url, lock_wait_s if lock_wait_s is not None else wait_limit_s()
        self.engine = create_engine(url, connect_args=_lock_poll(url, min(LOCK_POLL_S, self.lock_wait_s)))
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        # A new store is created at the newest revision; an older one upgraded.
        waiting(lambda: migrate.upgrade(self.engine), url, self.lock_wait_s, "opening")
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """The one place that commits: everything inside lands together or not at all."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


class StorePart:
    """One job of the store over a shared `Database`; each public method waits while the store is locked
    (`results.busy.waits_when_locked` on the subclass)."""

    def __init__(self, db: Database):
        self.db = db

    @property
    def url(self) -> str:
        return self.db.url

    @property
    def lock_wait_s(self) -> float:
        return self.db.lock_wait_s

    def session(self):
        return self.db.session()


def aware(moment: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without their zone; every time stored here is UTC."""
    return moment.replace(tzinfo=timezone.utc) if moment is not None and moment.tzinfo is None else moment


def _lock_poll(url: str, poll_s: float) -> dict:
    """One attempt's wait on another process's lock, after which results.busy retries (and says so)."""
    if url.startswith("sqlite"):
        return {"timeout": poll_s}
    if url.startswith("postgresql"):
        return {"options": f"-c lock_timeout={max(int(poll_s * 1000), 1)}"}
    return {}


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (leaderboard) never block the writing driver
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()

"""A store that another process holds locked: every store call waits, says so once, and gives up at a limit.

SQLite answers "database is locked" when another process holds its write lock past the busy timeout; PostgreSQL
waits on a lock for ever unless `lock_timeout` is set, which the store sets (LOCK_POLL_S) so that both backends
come back here. A store call is one transaction that rolled back whole, so calling it again is safe.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Callable, TypeVar

from sqlalchemy.exc import OperationalError

WAIT_ENV = "QLORA_SWEEP_STORE_WAIT_S"
DEFAULT_WAIT_S = 300.0
LOCK_POLL_S = 2.0
"""How long one attempt waits on a lock (SQLite's busy timeout, PostgreSQL's lock_timeout) before it is retried."""
_SQLITE_BUSY = ("database is locked", "database table is locked")
_POSTGRES_LOCK_NOT_AVAILABLE = "55P03"

T = TypeVar("T")


class StoreLocked(RuntimeError):
    """The store stayed locked by another process for longer than the wait limit; nothing was written."""


def wait_limit_s() -> float:
    return float(os.environ.get(WAIT_ENV) or DEFAULT_WAIT_S)


def is_lock_error(exc: OperationalError) -> bool:
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return code == _POSTGRES_LOCK_NOT_AVAILABLE or any(text in str(exc.orig) for text in _SQLITE_BUSY)


def waiting(call: Callable[[], T], url: str, limit_s: float, what: str) -> T:
    """`call()`, again while the store is locked by another process, until `limit_s` have passed."""
    deadline = None
    while True:
        try:
            return call()
        except OperationalError as exc:
            if not is_lock_error(exc):
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + limit_s
                print(f"results store {url} is locked by another process ({what}); waiting up to {limit_s:.0f} s "
                      f"(${WAIT_ENV})", file=sys.stderr, flush=True)
            if now >= deadline:
                raise StoreLocked(f"the results store {url} stayed locked by another process for {limit_s:.0f} s "
                                  f"({what}); nothing of this call was written. Fix: end the process that holds it "
                                  f"(an open sqlite3 shell, a long transaction), or wait longer with ${WAIT_ENV}"
                                  ) from exc
            time.sleep(min(0.5, deadline - now))


def waits_when_locked(cls: type) -> type:
    """Every public method of `cls` (a store: `.url`, `.lock_wait_s`) waits while the store is locked."""
    for name, method in list(vars(cls).items()):
        if callable(method) and not name.startswith("_") and name != "session":
            setattr(cls, name, _waiting_method(method, name))
    return cls


def _waiting_method(method: Callable, name: str) -> Callable:
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        return waiting(lambda: method(self, *args, **kwargs), self.url, self.lock_wait_s, name)
    return wrapper

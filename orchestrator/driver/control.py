"""Who drives a sweep, whether that driver is still alive, and how a driver is asked to stop.

One driver per sweep: it records `host:pid` and a heartbeat in the store. A second `sweep run` of
the same sweep is refused while that driver lives; once it is gone (killed, machine lost), the next
run takes over and re-runs what it left unfinished.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

HEARTBEAT_INTERVAL_S = 5.0
# A driver on another host is presumed dead after this long without a heartbeat.
STALE_AFTER_S = 60.0


class SweepBusy(Exception):
    """Another live driver holds the sweep."""


def driver_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def driver_alive(driver: str | None, heartbeat_at: datetime | None, now: datetime | None = None) -> bool:
    """On this host: is the process there. Elsewhere: was there a heartbeat within STALE_AFTER_S."""
    if not driver:
        return False
    host, _, pid = driver.rpartition(":")
    if host == socket.gethostname():
        return _process_exists(int(pid))
    now = now or datetime.now(timezone.utc)
    return heartbeat_at is not None and (now - heartbeat_at).total_seconds() < STALE_AFTER_S


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class StopFlag:
    """Set by the first Ctrl-C or SIGTERM (stop gracefully); a second Ctrl-C aborts at once."""

    def __init__(self):
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, _frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum


@contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """Catch SIGINT/SIGTERM for the duration (main thread only; elsewhere the flag is never set)."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.signal(s, flag._handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

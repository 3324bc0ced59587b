"""Holds a results store locked for a while, as another process would (a sqlite3 shell left mid-transaction, a
long migration): `python tests/lock_holder.py URL SECONDS`. Prints `locked` once it holds the lock."""

from __future__ import annotations

import sys
import time


def main(url: str, seconds: float) -> None:
    if url.startswith("sqlite:///"):
        import sqlite3

        connection = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")  # no other connection may write
    else:
        import psycopg

        connection = psycopg.connect(url.replace("+psycopg", ""))
        connection.execute("LOCK TABLE sweeps, sweep_trials, sweep_metrics IN ACCESS EXCLUSIVE MODE")  # nor read
    print("locked", flush=True)
    time.sleep(seconds)
    connection.execute("COMMIT")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))

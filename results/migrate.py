"""Schema upgrades of the results store with Alembic: one migration per change (results/migrations/versions),
applied in place when a store is opened.

- A new store gets today's tables at once (create_all) and is stamped at the newest revision: Optuna may
  already keep its own tables (`trials` among them) in the same database, so the 0.1 layout is never built.
- A store written before migrations existed is recognised by its tables, stamped at the revision its layout
  matches, and upgraded from there.
- Our revisions live in their own version table: Optuna keeps its schema's in `alembic_version`.
"""

from __future__ import annotations

import functools
from pathlib import Path

from sqlalchemy import inspect

VERSION_TABLE = "sweep_schema_version"
_SCRIPTS = Path(__file__).with_name("migrations")


def upgrade(engine) -> None:
    """Bring the store behind `engine` to the newest revision; nothing stored is lost."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    from results.tables import Base

    with engine.begin() as connection:
        current = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()
        if current == head():
            return
        config = _config(connection)
        if current is None:
            layout = _layout_before_migrations(connection)
            if layout is None:  # a new store
                Base.metadata.create_all(connection)
                command.stamp(config, "head")
                return
            command.stamp(config, layout)
        command.upgrade(config, "head")


@functools.cache
def head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(_SCRIPTS)).get_current_head()


def _layout_before_migrations(connection) -> str | None:
    """The revision an unstamped store's tables match: 0002 for `sweep_*` tables (0.2 and later; 0003 adds what
    they lack), 0001 for the 0.1 layout (a `trials` table with content keys, not Optuna's), None when new."""
    tables = inspect(connection)
    names = set(tables.get_table_names())
    if "sweep_trials" in names:
        return "0002"
    if "trials" in names and "content_key" in {c["name"] for c in tables.get_columns("trials")}:
        return "0001"
    return None


def _config(connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.attributes["connection"] = connection
    return config

"""Alembic's environment for the results store: always run in-process by results.migrate, on its connection."""

from alembic import context

from results.migrate import VERSION_TABLE
from results.tables import Base

context.configure(connection=context.config.attributes["connection"], target_metadata=Base.metadata,
                  version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()

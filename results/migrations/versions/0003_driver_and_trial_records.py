"""0.2 to 0.4: the driver's claim and heartbeat, stop requests, and what each trial records (worker, attempts,
study trial, scoring, environment, baseline, resume step, every reference). Stores written between those
versions have some of these columns already: only the missing ones are added.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
ADDED = {"sweeps": [sa.Column("driver", sa.String(200)), sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
                    sa.Column("stop_requested", sa.Boolean, server_default=sa.false())],
         "sweep_trials": [sa.Column("worker", sa.String(200)), sa.Column("attempts", sa.Integer, server_default="0"),
                          sa.Column("study_trial", sa.Integer),
                          sa.Column("stop_requested", sa.Boolean, server_default=sa.false()),
                          sa.Column("scoring", sa.JSON), sa.Column("environment", sa.JSON),
                          sa.Column("baseline", sa.String(200)), sa.Column("resumed_from_step", sa.Integer)],
         "sweep_predictions": [sa.Column("references", sa.JSON)]}


def upgrade() -> None:
    have = sa.inspect(op.get_bind())
    for table, columns in ADDED.items():
        present = {c["name"] for c in have.get_columns(table)}
        for column in columns:
            if column.name not in present:
                op.add_column(table, column)


def downgrade() -> None:
    for table, columns in ADDED.items():
        for column in columns:
            op.drop_column(table, column.name)

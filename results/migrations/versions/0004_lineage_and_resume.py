"""Trials added while a sweep runs: a clone's or an extension's parent and fork step, and resume requests.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
ADDED = [sa.Column("origin", sa.String(20)), sa.Column("parent_id", sa.Integer),
         sa.Column("forked_at_step", sa.Integer),
         sa.Column("resume_requested", sa.Boolean, server_default=sa.false())]


def upgrade() -> None:
    for column in ADDED:
        op.add_column("sweep_trials", column)


def downgrade() -> None:
    for column in ADDED:
        op.drop_column("sweep_trials", column.name)

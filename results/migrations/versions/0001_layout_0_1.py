"""The 0.1 layout: sweeps, trials, metrics, predictions.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table("sweeps", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("name", sa.String(200), unique=True), sa.Column("spec", sa.JSON),
                    sa.Column("run_dir", sa.Text), sa.Column("notes", sa.JSON), sa.Column("created_at", sa.DateTime(timezone=True)))
    op.create_table("trials", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("sweep_id", sa.Integer, sa.ForeignKey("sweeps.id", ondelete="CASCADE"), index=True),
                    sa.Column("name", sa.String(200)), sa.Column("kind", sa.String(20)), sa.Column("params", sa.JSON),
                    sa.Column("config", sa.JSON), sa.Column("content_key", sa.String(64), index=True),
                    sa.Column("status", sa.String(20)), sa.Column("started_at", sa.DateTime(timezone=True)),
                    sa.Column("finished_at", sa.DateTime(timezone=True)), sa.Column("runtime_s", sa.Float),
                    sa.Column("timings", sa.JSON), sa.Column("adapter_dir", sa.Text), sa.Column("error", sa.Text),
                    sa.UniqueConstraint("sweep_id", "name"))
    op.create_table("metrics", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("trial_id", sa.Integer, sa.ForeignKey("trials.id", ondelete="CASCADE"), index=True),
                    sa.Column("name", sa.String(100)), sa.Column("step", sa.Integer), sa.Column("value", sa.Float))
    op.create_table("predictions", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("trial_id", sa.Integer, sa.ForeignKey("trials.id", ondelete="CASCADE"), index=True),
                    sa.Column("example_id", sa.String(100)), sa.Column("prediction", sa.Text),
                    sa.Column("reference", sa.Text), sa.Column("new_tokens", sa.Integer), sa.Column("scores", sa.JSON))


def downgrade() -> None:
    for table in ("predictions", "metrics", "trials", "sweeps"):
        op.drop_table(table)

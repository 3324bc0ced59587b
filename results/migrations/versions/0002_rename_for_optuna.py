"""0.2: our tables get a `sweep_` prefix, so Optuna's storage (its own `trials` table) fits in the same database.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
RENAMED = {"trials": "sweep_trials", "metrics": "sweep_metrics", "predictions": "sweep_predictions"}


def upgrade() -> None:
    for old, new in RENAMED.items():
        op.rename_table(old, new)  # SQLite rewrites the foreign keys that name the old table


def downgrade() -> None:
    for old, new in RENAMED.items():
        op.rename_table(new, old)

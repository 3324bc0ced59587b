"""The results store and every view of it: leaderboard, show, status, report, compare, TensorBoard."""

from trainer.moved import keep_importable

keep_importable({"results.models": "results.tables"})  # the ORM tables, renamed beside trainer.models

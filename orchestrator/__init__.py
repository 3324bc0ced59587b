"""The sweep orchestrator, one folder per concern (docs/architecture.md has the map):

- `planning/`: a spec made ready to run: load and check it, plan its trials, token budgets, models and data;
- `search/`: what runs next, a grid or an Optuna study;
- `driver/`: the loop that keeps trials running, their lifecycle, retries, placement, pack sizes, liveness,
  and the clones, extensions and resumes other terminals ask for;
- `backends/`: where trials run: the protocol the driver needs, and Ray;
- `trackers/`: the subscribers of everything a trial emits: the store, the study, TensorBoard, progress, MLflow;
- `export/`: a trial as a folder that reproduces the leaderboard: adapter or merged model, card, verification;
- `cli`: the `sweep` command; `quiet`: third-party progress bars and logs kept out of the terminal.
"""

from trainer.moved import keep_importable

# The flat layout before the subpackages: each old module path is the module at its new place.
keep_importable({f"orchestrator.{old}": f"orchestrator.{new}" for old, new in {
    "loading": "planning.loading", "checks": "planning.checks", "datachecks": "planning.datachecks",
    "plan": "planning.plan", "budget": "planning.budget", "prepare": "planning.prepare",
    "sweep": "driver.sweep", "lifecycle": "driver.lifecycle", "retry": "driver.retry",
    "placement": "driver.placement", "packs": "driver.pack_sizing", "control": "driver.control",
    "steering": "driver.steering", "sinks": "trackers.sinks", "progress": "trackers.progress",
    "mlflow_view": "trackers.mlflow_view", "backend": "backends.backend", "ray_backend": "backends.ray_backend",
    "study": "search.study", "model_card": "export.model_card", "verification": "export.verification",
    "environment": "quiet"}.items()})

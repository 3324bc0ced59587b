"""MLflow as a view of the results store (the only module that imports mlflow; `pip install qlora-sweep[mlflow]`).

Each sweep is one parent run, each trial a child run (continued when the trial runs again) with:
- params: the swept keys, and the full config flattened to dotted keys;
- metrics: every curve point per step, as the store holds it, and the final ones (`final/<metric>`);
- tags: state, reason, each final ROUGE's 95% bootstrap interval, and where it ran;
- artifacts: the adapter, the predictions, trial.log and the hardware record.
It is written when a trial ends (the store has everything by then). The store stays the source of truth: an
MLflow server that is down or refuses a call costs this view only, with one warning, and the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from evaluation.metrics import metrics_where
from orchestrator.driver.lifecycle import Change
from results.significance import mean_interval
from results.states import TrialState
from results.store import Store

ENV_URI = "MLFLOW_TRACKING_URI"
_SWEEP_TAG, _TRIAL_TAG = "qlora_sweep.sweep", "qlora_sweep.trial_id"
_ENDED = {TrialState.COMPLETED: "FINISHED", TrialState.FAILED: "FAILED", TrialState.PRUNED: "KILLED",
          TrialState.INTERRUPTED: "KILLED"}
_PARAM_CHARS = 6000  # MLflow's limit on one param value
_BATCH = 100  # MLflow's limit on params per log_batch (metrics: 1000)


def tracking_uri(configured: str | None) -> str | None:
    """The spec's `output.mlflow_tracking_uri`, else $MLFLOW_TRACKING_URI; None: no MLflow view."""
    return configured or os.environ.get(ENV_URI) or None


def mlflow_missing() -> str | None:
    """Why MLflow cannot be used here, or None."""
    if importlib.util.find_spec("mlflow") is None:
        return "MLflow is not installed. Fix: pip install 'qlora-sweep[mlflow]' (mlflow-skinny)"
    return None


class MlflowView:
    """A lifecycle sink. `sweep_dir` holds trial folders (trial.log) and, for a new experiment on a local
    tracking store, its artifacts."""

    def __init__(self, uri: str, sweep: str, spec: dict, store: Store, sweep_dir: Path, stream=sys.stderr):
        self.uri, self.sweep, self.store, self.sweep_dir, self.stream = uri, sweep, store, sweep_dir, stream
        self.client, self.parent, self._children = None, None, {}
        self._guard(self._open, spec)

    def on_transition(self, change: Change) -> None:
        if self.client is not None and (change.new.final or change.new is TrialState.RUNNING):
            self._guard(self._record, change)

    def close(self) -> None:
        if self.client is not None:
            self._guard(self.client.set_terminated, self.parent)

    def _guard(self, call, *args) -> None:
        """Run one MLflow call; on any failure warn once and turn the view off (the store has everything)."""
        try:
            call(*args)
        except Exception as exc:  # a server down, a refused write: this view only
            print(f"warning: MLflow at {self.uri} failed ({type(exc).__name__}: {str(exc)[:200]}); the MLflow view "
                  f"is off for this run, the results store keeps every result", file=self.stream, flush=True)
            self.client = None

    def _open(self, spec: dict) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a down server: one warning, not minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        experiment = client.get_experiment_by_name(self.sweep)
        if experiment is None:
            local = self.uri.startswith(("sqlite:", "file:")) or "://" not in self.uri
            artifacts = (self.sweep_dir / "mlflow-artifacts").as_uri() if local else None
            experiment_id = client.create_experiment(self.sweep, artifact_location=artifacts)
        else:
            experiment_id = experiment.experiment_id
        self.experiment_id = experiment_id
        found = client.search_runs([experiment_id], f"tags.`{_SWEEP_TAG}` = '{self.sweep}'", max_results=1)
        if found:
            self.parent = found[0].info.run_id
            client.update_run(self.parent, status="RUNNING")
        else:
            self.parent = client.create_run(experiment_id, run_name=self.sweep, tags={_SWEEP_TAG: self.sweep}).info.run_id
            _log_params(client, self.parent, _flat(spec))
        self.client = client

    def _record(self, change: Change) -> None:
        run_id = self._child(change.trial)
        if change.new is TrialState.RUNNING:
            return
        state = change.stored[0] if change.new is TrialState.REUSED else change.new
        summary, _ = self.store.trial(self.sweep, change.trial.name)  # this row only, not the whole sweep
        self._log_results(run_id, change, summary)
        self.client.set_tag(run_id, "state", state.value)
        if summary.error:
            self.client.set_tag(run_id, "reason", summary.error[-4000:])
        self.client.set_terminated(run_id, _ENDED.get(state, "FINISHED"))

    def _child(self, trial) -> str:
        """The trial's child run: found by its stable id (a trial that runs again continues it), else made."""
        if trial.trial_id in self._children:
            return self._children[trial.trial_id]
        found = self.client.search_runs([self.experiment_id], f"tags.`{_TRIAL_TAG}` = '{trial.trial_id}'",
                                        max_results=1)
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            tags = {_TRIAL_TAG: str(trial.trial_id), "mlflow.parentRunId": self.parent, "kind": trial.planned.kind}
            run_id = self.client.create_run(self.experiment_id, run_name=trial.name, tags=tags).info.run_id
            params = {**{f"swept.{k}": v for k, v in trial.planned.params.items()},
                      **_flat(dataclasses.asdict(trial.planned.config))}
            _log_params(self.client, run_id, params)
        self._children[trial.trial_id] = run_id
        return run_id

    def _log_results(self, run_id: str, change: Change, summary) -> None:
        from mlflow.entities import Metric

        points = [Metric(name, value, 0, step) for name, step, value in self.store.curves(summary.id)]
        for i in range(0, len(points), 1000):
            self.client.log_batch(run_id, metrics=points[i:i + 1000])
        predictions = change.result.predictions if change.result is not None else self.store.predictions(
            self.sweep, summary.name)
        for name in (m.name for m in metrics_where(rankable=True)):  # each one with per-example values
            values = [p[name] for p in predictions if name in p]
            if values:
                interval = mean_interval(values)
                self.client.set_tag(run_id, f"interval.{name}", f"{interval.estimate:.4f} [{interval.low:.4f}, "
                                    f"{interval.high:.4f}] (95% bootstrap, {interval.examples} examples)")
        self._log_artifacts(run_id, change, summary, predictions)

    def _log_artifacts(self, run_id: str, change: Change, summary, predictions: list[dict]) -> None:
        if summary.environment:
            self.client.log_dict(run_id, summary.environment, "environment.json")
            for key in ("device", "compute_dtype", "node"):
                if key in summary.environment:
                    self.client.set_tag(run_id, f"environment.{key}", str(summary.environment[key]))
        if predictions:
            self.client.log_text(run_id, "\n".join(json.dumps(p) for p in predictions), "predictions.jsonl")
        log = self.sweep_dir / "trials" / change.trial.name / "trial.log"
        if log.is_file():
            self.client.log_artifact(run_id, str(log))
        if summary.adapter_dir and Path(summary.adapter_dir).is_dir():
            self.client.log_artifacts(run_id, summary.adapter_dir, "adapter")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def _log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:_PARAM_CHARS]) for k, v in params.items()]
    for i in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=items[i:i + _BATCH])



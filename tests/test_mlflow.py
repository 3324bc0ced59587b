"""MLflow as a view of the store: a tiny sweep (real SQLite store, a real local MLflow tracking store, the
scripted backend) read back with MlflowClient; a re-run continues the same runs; a server that is down costs
the view only."""

from __future__ import annotations

import io

import pytest

from orchestrator.planning.loading import parse_spec
from orchestrator.driver.sweep import run_sweep
from results.store import Store
from tests.conftest import tiny_spec
from tests.scripted import Fail, Finish, ScriptedBackend
from trainer import events as ev

pytest.importorskip("mlflow", reason="the MLflow view is an extra: pip install 'qlora-sweep[mlflow]'")

PREDICTIONS = tuple({"example_id": f"e{i}", "prediction": "p", "references": ["r"], "new_tokens": 3,
                     "rouge1": 0.3 + 0.1 * i, "rouge2": 0.1, "rougeL": 0.2 + 0.1 * i, "rougeLsum": 0.25}
                    for i in range(4))
SCORES = {"rouge1": 0.45, "rouge2": 0.1, "rougeL": 0.35, "rougeLsum": 0.25, "gen_tokens": 3.0, "gen_words": 1.0}


def _script(fail_v2: bool):
    def script(config):
        curve = [ev.Metric("train/loss", 1, 2.0), ev.Metric("train/loss", 2, 1.5)]
        if config.prompt == "v2" and fail_v2:
            return [*curve, Fail("ValueError: boom")]
        return [*curve, Finish(SCORES, predictions=PREDICTIONS, adapter=True,
                               environment={"device": "cpu: scripted", "compute_dtype": "float32"})]
    return script


@pytest.fixture
def spec_with_mlflow(tiny_model_dir, local_data, tmp_path):
    raw = tiny_spec(tiny_model_dir, *local_data, tmp_path)
    raw["search"]["baselines"] = False
    raw["output"]["mlflow_tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return parse_spec(raw)


def test_each_trial_is_a_child_run_with_params_curves_intervals_and_artifacts(spec_with_mlflow):
    from mlflow.tracking import MlflowClient

    spec = spec_with_mlflow
    store = Store(spec.output.store_url())
    first = run_sweep(spec, store, ScriptedBackend(_script(fail_v2=True)), show_progress=False)
    assert first.completed == ["v1"] and first.failed == ["v2"]

    client = MlflowClient(tracking_uri=spec.output.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"tiny", "v1", "v2"}
    parent, v1, v2 = runs["tiny"], runs["v1"], runs["v2"]
    assert v1.data.tags["mlflow.parentRunId"] == v2.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert v1.data.params["swept.prompt"] == "v1" and v1.data.params["lora.rank"] == "4"
    assert v1.data.params["training.learning_rate"] == "0.01" and parent.data.params["search.grid.prompt"] == "['v1', 'v2']"
    history = [(m.step, m.value) for m in client.get_metric_history(v1.info.run_id, "train/loss")]
    assert history == [(1, 2.0), (2, 1.5)]
    assert v1.data.metrics["final/rougeL"] == pytest.approx(0.35)
    assert v1.data.tags["interval.rougeL"].startswith("0.3500 [") and "95% bootstrap, 4 examples" in \
        v1.data.tags["interval.rougeL"]
    assert (v1.info.status, v1.data.tags["state"]) == ("FINISHED", "completed")
    assert (v2.info.status, v2.data.tags["state"], v2.data.tags["reason"]) == ("FAILED", "failed", "ValueError: boom")
    assert v1.data.tags["environment.device"] == "cpu: scripted"
    artifacts = {a.path for a in client.list_artifacts(v1.info.run_id)}
    assert {"adapter", "predictions.jsonl", "trial.log", "environment.json"} <= artifacts
    assert [a.path for a in client.list_artifacts(v1.info.run_id, "adapter")] == ["adapter/adapter_config.json"]

    again = run_sweep(spec, store, ScriptedBackend(_script(fail_v2=False)), show_progress=False)
    assert again.reused == ["v1"] and again.completed == ["v2"]
    rerun = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert len(rerun) == 3 and rerun["v2"].info.run_id == v2.info.run_id  # the same child run, continued
    assert (rerun["v2"].info.status, rerun["v2"].data.tags["state"]) == ("FINISHED", "completed")


def test_an_mlflow_server_that_is_down_costs_only_the_view(spec_with_mlflow, monkeypatch):
    import dataclasses

    spec = spec_with_mlflow
    spec = dataclasses.replace(spec, output=dataclasses.replace(spec.output, mlflow_tracking_uri="http://127.0.0.1:9"))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    log = io.StringIO()
    outcome = run_sweep(spec, Store(spec.output.store_url()), ScriptedBackend(_script(fail_v2=False)), stream=log,
                        show_progress=False)
    assert sorted(outcome.completed) == ["v1", "v2"]
    warnings = [line for line in log.getvalue().splitlines() if line.startswith("warning: MLflow")]
    assert len(warnings) == 1 and "the results store keeps every result" in warnings[0]

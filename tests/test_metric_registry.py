"""A metric added to the registry (evaluation/metrics.py) and nowhere else shows in every view: the leaderboard
(table, csv, json, `--metric`), the report, the seed repeats, show, compare and MLflow."""

from __future__ import annotations

import csv
import io
import json

import pytest

from evaluation.metrics import METRICS, Metric
from orchestrator.cli import main
from results.store import Store
from trainer.result import TrialResult

NOVELTY = Metric("novelty", "NOV", rankable=True, repeat=True, column="extra", page_label="NOV", scale=100.0,
                 digits=1, unit="share x 100")


@pytest.fixture
def novelty(monkeypatch):
    """One registry entry, as a contributor would add it: nothing else is edited."""
    monkeypatch.setitem(METRICS, NOVELTY.name, NOVELTY)
    return NOVELTY


def _fill(store: Store, sweep: str, offset: float) -> None:
    sweep_id = store.lease.open_sweep(sweep, {}, f"runs/{sweep}", {})
    for seed in (1, 2):
        for rank, value in ((8, 0.25), (16, 0.5)):
            params = {"prompt": "v1", "lora.rank": rank, "training.seed": seed}
            trial_id, _ = store.records.register_trial(sweep_id, f"v1-r{rank}-seed{seed}", "trial", params, {},
                                               f"{sweep}{rank}{seed}")
            shown = value + offset + 0.01 * seed
            predictions = [{"example_id": f"e{i}", "prediction": "p", "references": ["r"], "new_tokens": 3,
                            "rougeL": 0.3, "novelty": shown + 0.01 * i} for i in range(4)]
            store.records.complete_trial(trial_id, TrialResult({"rougeL": 0.3, "novelty": shown}, predictions, None, {}), 1.0)


def test_a_metric_added_to_the_registry_shows_in_every_view(novelty, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = Store(url)
    _fill(store, "a", 0.0)

    assert main(["leaderboard", "a", "--store", url, "--metric", "novelty"]) == 0  # it ranks
    table = capsys.readouterr().out
    assert "ranked by novelty (share x 100)" in table and "NOV_95ci" in table
    assert table.splitlines()[table.splitlines().index("") + 1].split()[-1] == "NOV"  # its own column
    assert main(["leaderboard", "a", "--store", url, "--format", "csv"]) == 0
    rows = {r["trial"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert rows["v1-r16-seed2"]["NOV"] == "52.0"  # scale and digits from the entry
    assert main(["leaderboard", "a", "--store", url, "--format", "json", "--metric", "novelty"]) == 0
    board = json.loads(capsys.readouterr().out)
    assert board["rows"][0]["trial"] == "v1-r16-seed2" and board["rows"][0]["scores"]["novelty"] == pytest.approx(52)
    group = {g["config"]: g for g in board["repeats"]}["v1-r16"]
    assert group["mean"]["novelty"] == pytest.approx(51.5) and group["std"]["novelty"] == pytest.approx(0.7071, 1e-3)
    assert main(["leaderboard", "a", "--store", url, "--metric", "novelty"]) == 0
    assert "NOV_sd" in capsys.readouterr().out.split("repeats over training.seed")[1]

    report = tmp_path / "a.html"
    assert main(["report", "a", "--store", url, "--out", str(report)]) == 0
    assert "<th>NOV</th>" in report.read_text()
    assert main(["show", "a", "v1-r8-seed1", "--store", url, "--metric", "novelty", "--examples", "1"]) == 0
    shown = capsys.readouterr().out
    assert "novelty 26.0" in shown.split("final:")[1].splitlines()[0] and "[e0] novelty 26.0" in shown

    _fill(store, "b", 0.1)
    assert main(["compare", "a", "b", "--store", url, "--metric", "novelty", "--format", "json"]) == 0
    pairs = json.loads(capsys.readouterr().out)["pairs"]
    assert len(pairs) == 4 and all(p["difference"]["estimate"] == pytest.approx(10.0) for p in pairs)


def test_mlflow_logs_a_metric_added_to_the_registry(novelty, tiny_model_dir, local_data, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from orchestrator.planning.loading import parse_spec
    from orchestrator.driver.sweep import run_sweep
    from tests.conftest import tiny_spec
    from tests.scripted import Finish, ScriptedBackend

    raw = tiny_spec(tiny_model_dir, *local_data, tmp_path)
    raw["search"] = {"type": "grid", "grid": {"prompt": ["v1"]}, "baselines": False}
    raw["output"]["mlflow_tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = parse_spec(raw)
    predictions = tuple({"example_id": f"e{i}", "prediction": "p", "references": ["r"], "new_tokens": 3,
                         "novelty": 0.5 + 0.1 * i} for i in range(4))
    backend = ScriptedBackend(lambda config: [Finish({"rougeL": 0.3, "novelty": 0.65}, predictions=predictions)])
    assert run_sweep(spec, Store(spec.output.store_url()), backend, show_progress=False).completed == ["v1"]
    client = MlflowClient(tracking_uri=spec.output.mlflow_tracking_uri)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])}
    assert runs["v1"].data.metrics["final/novelty"] == pytest.approx(0.65)
    assert runs["v1"].data.tags["interval.novelty"].startswith("0.6500 [")

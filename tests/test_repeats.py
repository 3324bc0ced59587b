"""Seeds as repeats: a seed axis plans one trial per seed and one baseline per zero-shot setting; the views
group the repeats of a config (mean, sd across seeds, n) and rank configs by the mean."""

from __future__ import annotations

import json
import statistics

import pytest

from orchestrator.cli import main
from orchestrator.search.strategies import expand
from orchestrator.planning.loading import load_spec
from results.store import Store
from tests.test_plan import REPO
from trainer.result import TrialResult

# rougeL of each (config, seed), chosen so that the better single run (seed 2 of r8) is not the better config.
SCORES = {("v1-r8", 1): 0.20, ("v1-r8", 2): 0.40, ("v1-r8", 3): 0.21,
          ("v1-r16", 1): 0.30, ("v1-r16", 2): 0.31, ("v1-r16", 3): 0.35}


def test_a_seed_axis_plans_a_trial_per_seed_and_one_baseline_per_prompt(monkeypatch, data_root):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("QLORA_SWEEP_DATA_DIR", str(data_root))
    spec = load_spec("smoke.yaml", ["search.grid.training.seed=[1,2,3]"])
    plan = expand(spec)
    trials = [t for t in plan if t.kind == "trial"]
    assert len(trials) == 3 * len(expand(load_spec("smoke.yaml"))) - 3 * 2  # every fine-tune x 3 seeds
    assert sorted({t.config.training.seed for t in trials}) == [1, 2, 3]
    assert [t.name for t in plan if t.kind == "baseline"] == ["v1-zero-shot", "v2-zero-shot"]
    assert {t.baseline for t in trials} == {"v1-zero-shot", "v2-zero-shot"}
    assert main(["plan", str(REPO / "sweeps" / "smoke.yaml"), "--set", "search.grid.training.seed=[1,2,3]"]) == 0


@pytest.fixture
def seeded(store_url) -> tuple[Store, str]:
    """Six seeded fine-tunes and a baseline, in a store on each backend (SQLite, PostgreSQL)."""
    store = Store(store_url)
    url = store.url
    sweep_id = store.lease.open_sweep("seeds", {}, "runs/seeds", {})
    for (config, seed), score in SCORES.items():
        rank = int(config.split("-r")[1])
        params = {"prompt": "v1", "lora.rank": rank, "training.learning_rate": 5e-4, "training.seed": seed}
        trial_id, _ = store.records.register_trial(sweep_id, f"{config}-seed{seed}", "trial", params, {}, f"{config}{seed}",
                                           baseline="v1-zero-shot")
        store.records.complete_trial(trial_id, TrialResult(
            {"rougeL": score, "rouge1": score + 0.1, "gen_tokens": 20.0 + seed},
            [{"example_id": f"e{i}", "prediction": "p", "references": ["r"], "new_tokens": 3,
              "rougeL": score + 0.01 * i} for i in range(4)], None, {}), 10.0)
    base_id, _ = store.records.register_trial(sweep_id, "v1-zero-shot", "baseline", {"prompt": "v1"}, {}, "base")
    store.records.complete_trial(base_id, TrialResult({"rougeL": 0.1, "rouge1": 0.2, "gen_tokens": 30.0}, [], None, {}), 5.0)
    return store, url


def test_repeats_are_grouped_with_mean_sd_and_n_as_by_hand(seeded, capsys):
    _, url = seeded
    assert main(["leaderboard", "seeds", "--store", url, "--format", "json"]) == 0
    groups = {g["config"]: g for g in json.loads(capsys.readouterr().out)["repeats"]}
    assert set(groups) == {"v1-r8", "v1-r16", "v1-zero-shot"}  # names without their seed part
    for config in ("v1-r8", "v1-r16"):
        group = groups[config]
        values = [100 * SCORES[(config, s)] for s in (1, 2, 3)]
        mean = sum(values) / 3
        sd = (sum((v - mean) ** 2 for v in values) / 2) ** 0.5  # by hand: n - 1 in the denominator
        assert group["n"] == 3 and group["seeds"] == [1, 2, 3] and group["trials"] == [f"{config}-seed{s}"
                                                                                         for s in (1, 2, 3)]
        assert group["mean"]["rougeL"] == pytest.approx(mean) and group["std"]["rougeL"] == pytest.approx(sd)
        assert group["mean"]["gen_tokens"] == pytest.approx(22.0) and "training.seed" not in group["params"]
    ranked = list(groups)
    assert ranked[0] == "v1-r16" and groups["v1-r16"]["best"] and not groups["v1-r8"]["best"]  # 32.0 beats 27.0
    assert groups["v1-zero-shot"]["n"] == 1 and groups["v1-zero-shot"]["std"]["rougeL"] is None

    assert main(["leaderboard", "seeds", "--store", url]) == 0
    text = capsys.readouterr().out
    table = text.split("repeats over training.seed")[1].splitlines()
    r16 = next(line for line in table if line.lstrip("* ").startswith("v1-r16"))
    assert r16.startswith("*") and "32.00" in r16 and f"{statistics.stdev([30.0, 31.0, 35.0]):.2f}" in r16
    assert " 3 " in r16 and "1,2,3" in r16


def test_the_report_shows_the_repeats_and_compare_pairs_seed_with_seed(seeded, capsys, tmp_path):
    store, url = seeded
    report = tmp_path / "r.html"
    assert main(["report", "seeds", "--store", url, "--out", str(report)]) == 0
    html = report.read_text()
    assert "Repeats over training.seed" in html and "32.00" in html
    # The same grid again with other scores: pairs are matched by name, so seed k meets seed k.
    sweep_id = store.lease.open_sweep("seeds2", {}, "runs/seeds2", {})
    for (config, seed), score in SCORES.items():
        trial_id, _ = store.records.register_trial(sweep_id, f"{config}-seed{seed}", "trial", {"training.seed": seed}, {},
                                           f"2{config}{seed}")
        store.records.complete_trial(trial_id, TrialResult({"rougeL": score + 0.05 * seed}, [
            {"example_id": f"e{i}", "prediction": "p", "references": ["r"], "new_tokens": 3,
             "rougeL": score + 0.05 * seed + 0.01 * i} for i in range(4)], None, {}), 10.0)
    capsys.readouterr()
    assert main(["compare", "seeds", "seeds2", "--store", url, "--format", "json"]) == 0
    pairs = json.loads(capsys.readouterr().out)["pairs"]
    assert {(p["trial_a"], p["trial_b"]) for p in pairs} == {(f"{c}-seed{s}", f"{c}-seed{s}") for c, s in SCORES}
    for p in pairs:
        seed = int(p["trial_a"].rsplit("seed", 1)[1])
        assert p["mean_b"] - p["mean_a"] == pytest.approx(5.0 * seed)


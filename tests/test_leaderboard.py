"""Leaderboard from the store: ranking, deltas against the same prompt's baseline, formats."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import pytest

from orchestrator.cli import main
from results import leaderboard
from results.provenance import scoring_groups
from results.store import Store
from trainer.result import TrialResult


@pytest.fixture
def filled(tmp_path) -> tuple[Store, str]:
    url = f"sqlite:///{tmp_path / 'lb.db'}"
    store = Store(url)
    sweep_id = store.lease.open_sweep("g", {}, "runs/g", {"scoring": "first reference"})
    rows = [("v1-r8-lr5e-4", "trial", "v1", 8, 5e-4, 0.30, "completed"),
            ("v2-r8-lr5e-4", "trial", "v2", 8, 5e-4, 0.35, "completed"),
            ("v1-r16-lr5e-4", "trial", "v1", 16, 5e-4, None, "failed"),
            ("v1-zero-shot", "baseline", "v1", None, None, 0.10, "completed"),
            ("v2-zero-shot", "baseline", "v2", None, None, 0.40, "completed")]
    for name, kind, prompt, rank, lr, rouge_l, status in rows:
        params = {"prompt": prompt} if kind == "baseline" else {"prompt": prompt, "lora.rank": rank,
                                                                 "training.learning_rate": lr}
        trial_id, _ = store.records.register_trial(sweep_id, name, kind, params, {}, name)
        if status == "completed":
            store.records.complete_trial(trial_id, TrialResult({"rouge1": rouge_l + 0.05, "rouge2": 0.1, "rougeL": rouge_l,
                                                        "rougeLsum": rouge_l, "gen_tokens": 20.0, "gen_words": 15.0},
                                                       [], None, {}), 10.0)
        else:
            store.records.end_trial(trial_id, "failed", "boom", 1.0)
    return store, url


def test_ranking_delta_and_best(filled):
    store, _ = filled
    rows = leaderboard.build(store.summary("g"), "rougeL")
    assert [r.trial for r in rows] == ["v2-zero-shot", "v2-r8-lr5e-4", "v1-r8-lr5e-4", "v1-zero-shot", "v1-r16-lr5e-4"]
    assert [r.best for r in rows] == [True, False, False, False, False]
    by = {r.trial: r for r in rows}
    assert by["v1-r8-lr5e-4"].delta == pytest.approx(20.0)   # 30.0 - 10.0 points
    assert by["v2-r8-lr5e-4"].delta == pytest.approx(-5.0)   # worse than its own prompt's baseline
    assert by["v1-r16-lr5e-4"].status == "failed" and by["v1-r16-lr5e-4"].scores == {}
    assert [r.trial for r in leaderboard.build(store.summary("g"), "rouge1")][0] == "v2-zero-shot"


def test_formats(filled):
    store, _ = filled
    rows = leaderboard.build(store.summary("g"))
    table = leaderboard.render(rows, "table", "rougeL", {"scoring": "first reference"}, "g")
    assert "scoring: first reference" in table and table.count("\n*  ") == 1
    parsed = list(csv.DictReader(io.StringIO(leaderboard.render(rows, "csv", "rougeL", {}, "g"))))
    assert len(parsed) == 5 and parsed[0]["best"] == "yes" and parsed[1]["RL"] == "35.00" and parsed[2]["RL"] == "30.00"
    data = json.loads(leaderboard.render(rows, "json", "rougeL", {}, "g"))
    assert data["rows"][2]["delta"] == pytest.approx(20.0)
    assert leaderboard.render(rows, "markdown", "rougeL", {}, "g").count("\n|") == 7  # header, rule, 5 rows


def test_cli_reads_store(filled, capsys):
    _, url = filled
    assert main(["leaderboard", "--store", url, "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 6 and not out.endswith("\n\n") and "\r" not in out  # header + 5 rows
    assert main(["leaderboard", "nope", "--store", url]) == 2
    assert "allowed: g" in capsys.readouterr().err


def _scored(store, sweep_id, name, kind, prompt, per_example: list[float], scoring: dict) -> None:
    trial_id, _ = store.records.register_trial(sweep_id, name, kind, {"prompt": prompt}, {}, name)
    predictions = [{"example_id": f"e{i}", "prediction": "p", "references": ["r1", "r2"], "new_tokens": 3,
                    "rougeL": v} for i, v in enumerate(per_example)]
    mean = sum(per_example) / len(per_example)
    store.records.complete_trial(trial_id, TrialResult({"rougeL": mean}, predictions, None, {}, scoring), 1.0)


def test_rows_scored_differently_are_never_ranked_together_silently(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'p.db'}")
    sweep_id = store.lease.open_sweep("s", {}, "runs/s", {})
    ascii_way = {"tokenizer": "ascii", "references": "max over summary1, summary2"}
    first_way = {"tokenizer": "ascii", "references": "summary1"}
    _scored(store, sweep_id, "a-high", "trial", "v1", [0.5] * 10, ascii_way)
    _scored(store, sweep_id, "a-base", "baseline", "v1", [0.1, 0.2] * 5, ascii_way)
    _scored(store, sweep_id, "b-higher", "trial", "v1", [0.9] * 10, first_way)  # scored another way

    summary = store.summary("s")
    rows = {r.trial: r for r in leaderboard.build(summary, "rougeL", store.example_scores("s", "rougeL"))}
    assert (rows["a-high"].scoring, rows["b-higher"].scoring) == ("A", "B")
    assert rows["a-high"].best and rows["b-higher"].best  # one best per way of scoring, not one overall
    assert rows["a-high"].vs_best is None and rows["a-base"].vs_best.estimate == pytest.approx(-35.0)
    # a-high vs its baseline: +35 points on every example pair -> the interval is +35 and excludes 0
    assert rows["a-high"].vs_baseline.estimate == pytest.approx(35.0) and rows["a-high"].vs_baseline.excludes_zero
    assert rows["b-higher"].vs_baseline is None  # its prompt's baseline was scored the other way
    assert rows["a-base"].interval.low <= 15.0 <= rows["a-base"].interval.high

    text = leaderboard.render(list(rows.values()), "table", "rougeL", {}, "s", scoring_groups(summary.trials))
    assert "BERTScore" not in text  # only a column when some trial computed it
    assert "WARNING: rows were scored in 2 different ways" in text
    assert "scoring A: tokenizer ascii, references max over summary1, summary2" in text
    assert "scoring B: tokenizer ascii, references summary1" in text


def test_bertscore_gets_columns_when_computed_and_can_rank(filled):
    store, _ = filled
    summary = store.summary("g")
    bert = {"v1-r8-lr5e-4": (0.871, 0.9, 0.85), "v2-r8-lr5e-4": (0.95, 0.96, 0.94)}
    trials = [dataclasses.replace(t, metrics={**t.metrics, **dict(zip(
        ("bertscore", "bertscore_precision", "bertscore_recall"), bert[t.name]))}) if t.name in bert else t
        for t in summary.trials]
    rows = leaderboard.build(dataclasses.replace(summary, trials=trials))
    parsed = {r["trial"]: r for r in csv.DictReader(io.StringIO(leaderboard.render(rows, "csv", "rougeL", {}, "g")))}
    assert (parsed["v1-r8-lr5e-4"]["BERTScore"], parsed["v1-r8-lr5e-4"]["BS_P"], parsed["v1-r8-lr5e-4"]["BS_R"]) == (
        "87.10", "90.00", "85.00")
    assert parsed[[n for n in parsed if n not in bert][0]]["BERTScore"] == "-"
    by_bert = leaderboard.build(dataclasses.replace(summary, trials=trials), "bertscore")
    assert [r.trial for r in by_bert[:2]] == ["v2-r8-lr5e-4", "v1-r8-lr5e-4"] and by_bert[0].best  # ranked by F1
    assert len(by_bert) == len(rows) and not {r.trial for r in by_bert[2:]} & set(bert)  # the rest: listed below


def _environment(device: str, dtype: str, note: str | None = None) -> dict:
    return {"device": device, "device_kind": "cpu", "compute_dtype": dtype, "requested_dtype": "auto",
            "dtype_note": note, "versions": {"torch": "2.13.0"}, "host_rss_mib": 900.0}


def test_mixed_hardware_is_said_in_the_header_and_one_device_in_one_line(filled, capsys):
    store, url = filled
    summary = store.summary("g")
    ids = {t.name: t.id for t in summary.trials}
    avx2, amx = "cpu: AMD EPYC, ISA AVX2 (no bf16 flags), 1 thread(s)", "cpu: Xeon, ISA AVX512 (amx_bf16), 1 thread(s)"
    assert main(["leaderboard", "g", "--store", url]) == 0
    unrecorded = capsys.readouterr().out  # results stored before trials recorded their hardware: no claim either way
    assert "hardware:" not in unrecorded and "WARNING: trials ran on" not in unrecorded
    for name in ids:
        store.records.set_environment(ids[name], _environment(avx2, "float32"))
    assert main(["leaderboard", "g", "--store", url]) == 0
    same = capsys.readouterr().out
    assert f"hardware: {avx2}, float32 (auto)" in same and "WARNING: trials ran on" not in same
    store.records.set_environment(ids["v2-r8-lr5e-4"], _environment(amx, "bfloat16"))
    assert main(["leaderboard", "g", "--store", url, "--format", "json"]) == 0
    hardware = json.loads(capsys.readouterr().out)["hardware"]
    assert hardware[0].startswith("WARNING: trials ran on 2 different devices or compute dtypes")
    assert f"  {amx}, bfloat16 (auto): v2-r8-lr5e-4" in hardware
    assert any(line.startswith(f"  {avx2}, float32 (auto): v1-r8-lr5e-4") for line in hardware)


def test_an_emulated_explicit_dtype_is_noted_once_in_status_and_show(filled, capsys):
    store, url = filled
    note = "compute_dtype bfloat16 is emulated on this CPU (AMD EPYC): a bfloat16 matmul ran 58x slower"
    for t in store.summary("g").trials:
        store.records.set_environment(t.id, _environment("cpu: AMD EPYC", "bfloat16", note))
    assert main(["status", "g", "--store", url]) == 0
    assert capsys.readouterr().out.count(note) == 1
    assert main(["show", "g", "v1-r8-lr5e-4", "--store", url]) == 0
    assert "ran on: cpu: AMD EPYC; bfloat16 (auto); host rss 900 MiB; torch 2.13.0" in capsys.readouterr().out


def test_eval_loss_ranks_lowest_first_and_is_shown_as_it_is(filled):
    store, _ = filled
    summary = store.summary("g")
    losses = {t.name: 2.0 + i / 10 for i, t in enumerate(summary.trials)}
    trials = [dataclasses.replace(t, metrics={**t.metrics, "eval_loss": losses[t.name]}) for t in summary.trials]
    rows = leaderboard.build(dataclasses.replace(summary, trials=trials), "eval_loss")
    ranked = [r.trial for r in rows if r.status == "completed"]
    assert ranked == sorted(ranked, key=losses.get) and rows[0].best  # lowest first
    with_base = next(r for r in rows if r.delta is not None)
    base = next(t for t in trials if t.kind == "baseline" and t.params["prompt"] == with_base.prompt)
    assert with_base.delta == pytest.approx(losses[with_base.trial] - losses[base.name])  # not x 100
    text = leaderboard.render(rows, "table", "eval_loss", {}, "g")
    assert "ranked by eval_loss (lowest first)" in text and f"{losses[ranked[0]]:.3f}" in text


def test_where_keeps_the_matching_trials_and_their_own_baselines(filled, capsys):
    _, url = filled

    def shown(*wheres: str) -> dict[str, dict]:
        assert main(["leaderboard", "--store", url, "--format", "json", *(a for w in wheres for a in ("--where", w))]) == 0
        return {r["trial"]: r for r in json.loads(capsys.readouterr().out)["rows"]}

    assert sorted(shown("prompt=v2")) == ["v2-r8-lr5e-4", "v2-zero-shot"]
    by_rank = shown("lora.rank=8", "training.learning_rate=5e-4")  # 5e-4 as typed equals the stored 0.0005
    assert sorted(by_rank) == ["v1-r8-lr5e-4", "v1-zero-shot", "v2-r8-lr5e-4", "v2-zero-shot"]
    assert by_rank["v1-r8-lr5e-4"]["delta"] == pytest.approx(20.0)  # still against its own baseline
    assert sorted(shown("status=failed")) == ["v1-r16-lr5e-4", "v1-zero-shot"]
    assert shown("lora.rank=4") == {}
    assert main(["leaderboard", "--store", url, "--where", "lora.rnak=8"]) == 2
    err = capsys.readouterr().err
    assert "--where lora.rnak=8: the key must be a swept setting or kind, status, name; given 'lora.rnak'" in err
    assert "did you mean 'lora.rank'?" in err
    assert main(["report", "--store", url, "--where", "prompt"]) == 2
    assert "a filter is key=value; given 'prompt'" in capsys.readouterr().err


def test_compare_two_sweeps_on_shared_examples_and_refuse_different_scoring(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = Store(url)
    how = {"tokenizer": "ascii", "references": "max over r1, r2", "eval_examples": 4}
    before = store.lease.open_sweep("before", {}, "runs/before", {})
    _scored(store, before, "v1-r8", "trial", "v1", [0.2, 0.3, 0.4, 0.5], how)
    _scored(store, before, "v1-zero-shot", "baseline", "v1", [0.1, 0.1, 0.2, 0.2], how)
    after = store.lease.open_sweep("after", {}, "runs/after", {})  # one eval example more: only the shared 4 count
    _scored(store, after, "v1-r8", "trial", "v1", [0.4, 0.5, 0.6, 0.7, 0.0], {**how, "eval_examples": 5})
    _scored(store, after, "v1-zero-shot", "baseline", "v1", [0.1, 0.2, 0.1, 0.2, 0.9], {**how, "eval_examples": 5})

    assert main(["compare", "before", "after", "--store", url, "--format", "json"]) == 0
    pairs = {p["trial_a"]: p for p in json.loads(capsys.readouterr().out)["pairs"]}
    tuned = pairs["v1-r8"]
    assert (tuned["mean_a"], tuned["mean_b"]) == pytest.approx((35.0, 55.0))  # the 5th example is left out
    assert tuned["difference"]["estimate"] == pytest.approx(20.0) and tuned["difference"]["examples"] == 4
    assert tuned["difference"]["low"] == pytest.approx(20.0) and tuned["verdict"] == "B better"  # +20 on every one
    assert (tuned["only_a"], tuned["only_b"]) == (0, 1)
    assert pairs["v1-zero-shot"]["verdict"] == "no clear difference"  # +0.1, -0.1, 0, 0

    assert main(["compare", "before:v1-zero-shot", "after:v1-r8", "--store", url]) == 0
    table = capsys.readouterr().out
    assert "v1-zero-shot / v1-r8" in table and "+40.00 [" in table and "B better" in table

    stemmed = store.lease.open_sweep("stemmed", {}, "runs/stemmed", {})
    _scored(store, stemmed, "v1-r8", "trial", "v1", [0.4, 0.5, 0.6, 0.7], {**how, "tokenizer": "unicode"})
    assert main(["compare", "before", "stemmed", "--store", url]) == 2
    assert "results scored differently are not compared: v1-r8 vs v1-r8 differ in tokenizer ('ascii' vs " \
           "'unicode')" in capsys.readouterr().err
    assert main(["compare", "before:v9", "after", "--store", url]) == 2
    assert "the trial must belong to sweep before; given 'v9'" in capsys.readouterr().err


def test_a_loss_is_worst_at_its_highest_and_shown_as_it_is_in_show_and_report(filled, capsys, tmp_path):
    store, url = filled
    summary = store.summary("g")
    trial = next(t for t in summary.trials if t.name == "v1-r8-lr5e-4")
    losses = {"e1": 1.25, "e2": 3.5, "e3": 2.0, "e4": 0.75}
    predictions = [{"example_id": e, "prediction": f"p{e}", "references": [f"r{e}"], "new_tokens": 5,
                    "rougeL": 0.1 * i, "eval_loss": loss} for i, (e, loss) in enumerate(losses.items())]
    store.records.complete_trial(trial.id, TrialResult({**trial.metrics, "eval_loss": 1.875}, predictions, None, {}), 10.0)
    assert main(["show", "g", "v1-r8-lr5e-4", "--store", url, "--metric", "eval_loss", "--examples", "1"]) == 0
    shown = capsys.readouterr().out
    worst, best = shown.split("worst 1 by eval_loss:")[1].split("best 1 by eval_loss:")
    assert "[e2] eval_loss 3.500" in worst and "[e4] eval_loss 0.750" in best  # highest loss worst, as is
    assert "eval_loss 1.875" in shown.split("final:")[1].splitlines()[0]  # not x 100
    assert main(["show", "g", "v1-r8-lr5e-4", "--store", url, "--metric", "rougeL", "--examples", "1"]) == 0
    shown = capsys.readouterr().out
    assert "[e1] rougeL 0.00" in shown.split("best 1")[0] and "[e4] rougeL 30.00" in shown.split("best 1")[1]
    report = tmp_path / "r.html"
    assert main(["report", "g", "--store", url, "--metric", "eval_loss", "--out", str(report)]) == 0
    html = report.read_text()
    worst_html, best_html = html.split("worst 2 by eval_loss")[1].split("best 2 by eval_loss")
    assert "e2: eval_loss 3.500" in worst_html and "e3: eval_loss 2.000" in worst_html
    assert "e4: eval_loss 0.750" in best_html.split("</div></div>")[0]


def test_every_view_reads_direction_scale_and_label_from_the_metric_registry():
    from evaluation.metrics import LOWER_IS_BETTER, METRICS, OBJECTIVES, RANKABLE, metric
    from orchestrator.export.model_card import _scores

    assert set(LOWER_IS_BETTER) >= {"eval_loss", "gen_tokens", "gen_words"} and "rougeL" not in LOWER_IS_BETTER
    for name in RANKABLE:
        m = metric(name)
        assert leaderboard.scale(name) == m.scale and leaderboard._short(name) == m.label
        assert m.direction == ("minimize" if m.lower_is_better else "maximize")
    assert leaderboard.scale("eval_loss") == 1.0 and leaderboard.scale("rouge2") == 100.0
    assert "| eval_loss | 2.346 |" in _scores({"eval_loss": 2.3456}) and "| rougeL | 31.25 |" in _scores({"rougeL": 0.3125})
    assert metric("bertscore").shown(0.8812) == "88.12"  # an F1 like ROUGE (show printed it unscaled before)
    assert "trainable_params" in METRICS and "trainable_params" not in OBJECTIVES

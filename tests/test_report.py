"""The HTML report rendered in real headless Chromium: model output stays text, nothing runs."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from orchestrator.cli import main
from results.store import Store
from trainer.result import TrialResult

HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned too'\"> & done"


@pytest.fixture
def report_store(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = Store(url)
    sweep_id = store.lease.open_sweep("s", {"output": {"run_dir": str(tmp_path / "runs")}}, "runs/s", {"eval_examples": 2})
    # A store written by anything: trial names and settings reach the charts' text too.
    for name, kind, score, text in (("v1-r8", "trial", 0.4, HOSTILE), ("v1-zero-shot", "baseline", 0.1, "plain"),
                                    ("v2-<i>tag</i>&", "trial", 0.3, "plain")):
        prompt = "v1" if name.startswith("v1") else "<b>v2</b>"
        trial_id, _ = store.records.register_trial(sweep_id, name, kind, {"prompt": prompt}, {}, name)
        store.records.add_metrics(trial_id, [("train/loss", 1, 2.0), ("train/loss", 2, 1.5), ("eval/rougeL", 2, score)])
        predictions = [{"example_id": f"e{i}", "prediction": text, "references": ["ref one", "ref <b>two</b>"],
                        "new_tokens": 5, "rougeL": score + i / 100} for i in range(2)]
        store.records.complete_trial(trial_id, TrialResult({"rougeL": score, "rouge1": score, "rouge2": score, "rougeLsum": score,
                                                    "gen_tokens": 5.0, "gen_words": 4.0}, predictions, None, {},
                                                   {"tokenizer": "ascii", "references": "max over summary1, summary2"}),
                             1.0)
    return url


def test_report_in_headless_chromium_shows_model_output_as_text(report_store, tmp_path, capsys):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is part of the test set-up (make test installs Debian's chromium)"
    out = tmp_path / "report.html"
    assert main(["report", "s", "--store", report_store, "--out", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    assert "<script" not in html.lower() and "&lt;script&gt;" in html  # escaped, and the report has no script

    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=2000",
                          "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "<title>sweep s</title>" in dom  # neither injected handler changed it: nothing ran
    assert "pwned" in dom and not re.search(r"<script|<img|<i>tag|<b>v2", dom, re.IGNORECASE)  # never as tags
    assert "v2-&lt;i&gt;tag&lt;/i&gt;&amp;" in dom  # in the table, the legends and the scatter, as text
    assert "prediction: &lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom
    assert "reference 2: ref &lt;b&gt;two&lt;/b&gt;" in dom and dom.count("<svg") >= 3  # curves and the scatter
    assert "scoring A: tokenizer ascii, references max over summary1, summary2" in dom


def test_scatter_labels_never_overlap_each_other_or_leave_the_chart_even_when_points_crowd():
    from results import charts

    # Nine trials whose points almost coincide: the case where labels used to be printed on top of each other.
    points = [(32.0 - 0.02 * i, 12.5 + 0.04 * i, f"v{i % 2 + 1}-r{8 * (i + 1)}-lr5e-4", i == 0) for i in range(8)]
    points.append((31.95, 12.6, "v1-zero-shot", False))
    fig, labels = charts.scatter(points, "generated tokens", "rougeL")
    renderer = fig.canvas.get_renderer()
    assert len(labels) == 9 and boxes_overlap(labels, renderer) == []
    frame = fig.axes[0].get_window_extent(renderer)
    for label in labels:
        box = label.get_window_extent(renderer)
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
    svg = charts.to_svg(fig, "scatter")
    assert svg.startswith("<svg") and "v1-zero-shot" in svg  # text stays text


def test_a_2x2x2_grid_is_drawn_as_rank_by_learning_rate_with_one_panel_per_prompt(tmp_path):
    from results import leaderboard, report

    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    grid = {"prompt": ["v1", "v2"], "lora.rank": [8, 16], "training.learning_rate": [5e-4, 2e-4]}
    sweep_id = store.lease.open_sweep("g", {"search": {"type": "grid", "grid": grid}}, "runs/g", {})
    scores = {}
    for i, (prompt, rank, lr) in enumerate((p, r, lr) for p in grid["prompt"] for r in grid["lora.rank"]
                                          for lr in grid["training.learning_rate"]):
        name = f"{prompt}-r{rank}-lr{lr:.0e}"
        trial_id, _ = store.records.register_trial(sweep_id, name, "trial", {"prompt": prompt, "lora.rank": rank,
                                                                        "training.learning_rate": lr}, {}, name)
        scores[name] = 0.2 + 0.01 * i
        store.records.complete_trial(trial_id, TrialResult({"rougeL": scores[name], "gen_tokens": 20.0}, [], None, {}, {}), 1.0)
    summary = store.summary("g")
    html = report.render(summary, leaderboard.build(summary), "rougeL", {}, {}, {}, storage_url=store.url)
    assert "The grid: rougeL by lora.rank and training.learning_rate" in html
    heatmap = html.split("The grid:")[1].split("</svg>")[0]
    assert heatmap.count("prompt=v1") == heatmap.count("prompt=v2") == 1  # one panel per prompt
    assert all(f"{100 * v:.2f}" in heatmap for v in scores.values())  # every cell shows its trial's score
    assert "Hyperparameter importance for rougeL (8 trials)" in html  # the grid read as an Optuna study


def boxes_overlap(artists: list, renderer) -> list[tuple[str, str]]:
    """Pairs of texts whose drawn boxes intersect, on the real figure."""
    boxes = [(a.get_text(), a.get_window_extent(renderer)) for a in artists]
    return [(n1, n2) for i, (n1, b1) in enumerate(boxes) for n2, b2 in boxes[i + 1:] if b1.overlaps(b2)]

"""The results store, the same tests on every backend: SQLite file (WAL) and SQLite in memory."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from results.store import Store


@pytest.fixture(params=["file", "memory"])
def store(request, tmp_path) -> Store:
    url = f"sqlite:///{tmp_path / 'sub' / 'r.db'}" if request.param == "file" else "sqlite:///:memory:"
    return Store(url)


def _trial(store: Store, sweep_id: int, name: str = "v1-r8", key: str = "k1") -> tuple[int, bool]:
    return store.register_trial(sweep_id, name, "trial", {"prompt": "v1", "lora.rank": 8}, {"x": 1}, key)


def test_trial_lifecycle(store):
    sweep_id = store.open_sweep("s", {"name": "s"}, "runs/s", {"scoring": "first ref"})
    trial_id, done = _trial(store, sweep_id)
    assert not done
    store.mark_running(trial_id)
    store.add_metrics(trial_id, [("train/loss", 1, 2.5), ("train/loss", 2, 2.0)])
    store.complete_trial(trial_id, {"rougeL": 0.31, "gen_tokens": 20.0},
                         [{"example_id": "e1", "prediction": "p", "reference": "r", "new_tokens": 3, "rougeL": 0.3}],
                         runtime_s=12.5, timings={"train": 10.0}, adapter_dir="a")
    summary = store.summary("s")
    [t] = summary.trials
    assert (t.name, t.status, t.runtime_s, t.metrics) == ("v1-r8", "completed", 12.5, {"rougeL": 0.31, "gen_tokens": 20.0})
    assert summary.notes == {"scoring": "first ref"}
    assert store.curves(trial_id)[:2] == [("train/loss", 1, 2.5), ("train/loss", 2, 2.0)]
    assert store.predictions("s", "v1-r8") == [{"example_id": "e1", "prediction": "p", "reference": "r",
                                               "new_tokens": 3, "rougeL": 0.3}]


def test_rerun_reuses_completed_and_never_duplicates(store):
    sweep_id = store.open_sweep("s", {}, "runs/s", {})
    trial_id, _ = _trial(store, sweep_id)
    store.add_metrics(trial_id, [("train/loss", 1, 2.5)])
    store.fail_trial(trial_id, "Traceback ... ValueError: boom", 3.0)
    assert store.summary("s").trials[0].error.endswith("boom")
    assert store.curves(trial_id) == [("train/loss", 1, 2.5)]  # partial curve kept on failure
    again, done = _trial(store, sweep_id)  # failed -> runs again under the same row, cleared
    assert (again, done) == (trial_id, False) and store.curves(trial_id) == []
    store.complete_trial(trial_id, {"rougeL": 0.2}, [], 1.0, {}, None)
    assert _trial(store, sweep_id) == (trial_id, True)
    assert _trial(store, sweep_id, key="changed") == (trial_id, False)  # config changed -> re-run
    assert store.open_sweep("s", {}, "runs/s", {}) == sweep_id
    assert len(store.summary("s").trials) == 1 and store.sweep_names() == ["s"]


def test_session_scope_rolls_back_everything(store):
    sweep_id = store.open_sweep("s", {}, "runs/s", {})
    trial_id, _ = _trial(store, sweep_id)
    with pytest.raises(RuntimeError):
        with store.session() as s:
            s.execute(text("UPDATE trials SET status='completed' WHERE id=:i"), {"i": trial_id})
            raise RuntimeError("interrupted")
    assert store.summary("s").trials[0].status == "pending"


def test_sqlite_file_uses_wal(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'w.db'}")
    with store.session() as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"

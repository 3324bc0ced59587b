"""The results store, every part of it (`records`, `control`, `lease`, and the shared reads), the same tests on
every backend: SQLite file (WAL), SQLite in memory, and a real PostgreSQL server."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from results.store import Store
from trainer.result import TrialResult


@pytest.fixture(params=["file", "memory", "postgresql"])
def store(request, tmp_path) -> Store:
    if request.param == "postgresql":
        return Store(request.getfixturevalue("postgres").new_database())
    url = f"sqlite:///{tmp_path / 'sub' / 'r.db'}" if request.param == "file" else "sqlite:///:memory:"
    return Store(url)


def _trial(store: Store, sweep_id: int, name: str = "v1-r8", key: str = "k1") -> tuple[int, bool]:
    return store.records.register_trial(sweep_id, name, "trial", {"prompt": "v1", "lora.rank": 8}, {"x": 1}, key)


def test_trial_lifecycle(store):
    sweep_id = store.lease.open_sweep("s", {"name": "s"}, "runs/s", {"scoring": "first ref"})
    trial_id, done = _trial(store, sweep_id)
    assert not done
    store.records.mark_running(trial_id)
    store.records.add_metrics(trial_id, [("train/loss", 1, 2.5), ("train/loss", 2, 2.0)])
    store.records.complete_trial(trial_id, TrialResult(
        {"rougeL": 0.31, "gen_tokens": 20.0},
        [{"example_id": "e1", "prediction": "p", "reference": "r", "new_tokens": 3, "rougeL": 0.3}],
        adapter_dir="a", timings_s={"train": 10.0}),
        runtime_s=12.5, environment={"device": "cpu: x", "compute_dtype": "float32", "host_rss_mib": 812.5})
    summary = store.summary("s")
    [t] = summary.trials
    assert t.environment == {"device": "cpu: x", "compute_dtype": "float32", "host_rss_mib": 812.5}
    assert (t.name, t.status, t.runtime_s, t.metrics) == ("v1-r8", "completed", 12.5, {"rougeL": 0.31, "gen_tokens": 20.0})
    assert summary.notes == {"scoring": "first ref"}
    assert store.curves(trial_id)[:2] == [("train/loss", 1, 2.5), ("train/loss", 2, 2.0)]
    assert store.predictions("s", "v1-r8") == [{"example_id": "e1", "prediction": "p", "reference": "r",
                                               "references": ["r"], "new_tokens": 3, "rougeL": 0.3}]
    assert _trial(store, sweep_id, key="k2")[1] is False  # changed config: run again, and where it ran is unknown
    assert store.summary("s").trials[0].environment is None


def test_rerun_reuses_completed_and_never_duplicates(store):
    sweep_id = store.lease.open_sweep("s", {}, "runs/s", {})
    trial_id, _ = _trial(store, sweep_id)
    store.records.add_metrics(trial_id, [("train/loss", 1, 2.5)])
    store.records.end_trial(trial_id, "failed", "Traceback ... ValueError: boom", 3.0)
    assert store.summary("s").trials[0].error.endswith("boom")
    assert store.curves(trial_id) == [("train/loss", 1, 2.5)]  # partial curve kept on failure
    store.records.add_metrics(trial_id, [("train/loss", 2, 2.4)])
    again, done = _trial(store, sweep_id)  # failed -> runs again under the same row
    assert (again, done) == (trial_id, False)
    assert store.curves(trial_id) == [("train/loss", 1, 2.5), ("train/loss", 2, 2.4)]  # kept until it starts
    store.records.resume_from(trial_id, 1)  # its worker continues from the checkpoint of step 1, re-reporting its points
    assert store.curves(trial_id) == [] and store.summary("s").trials[0].resumed_from_step == 1
    store.records.resume_from(trial_id, 0)  # another attempt, from scratch
    assert store.summary("s").trials[0].resumed_from_step is None
    store.records.complete_trial(trial_id, TrialResult({"rougeL": 0.2}, [], None, {}), 1.0)
    assert _trial(store, sweep_id) == (trial_id, True)
    assert _trial(store, sweep_id, key="changed") == (trial_id, False)  # config changed -> re-run
    assert store.lease.open_sweep("s", {}, "runs/s", {}) == sweep_id
    assert len(store.summary("s").trials) == 1 and store.sweep_names() == ["s"]


def test_session_scope_rolls_back_everything(store):
    sweep_id = store.lease.open_sweep("s", {}, "runs/s", {})
    trial_id, _ = _trial(store, sweep_id)
    with pytest.raises(RuntimeError):
        with store.session() as s:
            s.execute(text("UPDATE sweep_trials SET status='completed' WHERE id=:i"), {"i": trial_id})
            raise RuntimeError("interrupted")
    assert store.summary("s").trials[0].status == "pending"


def test_sqlite_file_uses_wal(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'w.db'}")
    with store.session() as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_pruned_is_final_interrupted_and_running_are_rerun(store):
    sweep_id = store.lease.open_sweep("s", {}, "runs/s", {})
    pruned, _ = _trial(store, sweep_id, "a")
    store.records.add_metrics(pruned, [("eval/rougeL", 8, 0.1)])
    store.records.end_trial(pruned, "pruned", "pruned at step 8")
    left, _ = _trial(store, sweep_id, "b")
    store.records.mark_running(left, "host:1")
    assert _trial(store, sweep_id, "a") == (pruned, True)  # kept, curve and all
    assert store.curves(pruned) == [("eval/rougeL", 8, 0.1)]
    assert _trial(store, sweep_id, "b") == (left, False)  # a killed driver left it running: run again
    assert [(t.name, t.status, t.attempts) for t in store.summary("s").trials] == [("a", "pruned", 0),
                                                                                   ("b", "pending", 0)]


def test_one_driver_claims_a_sweep_and_stop_requests_reach_it(store):
    sweep_id = store.lease.open_sweep("s", {"v": 1}, "runs/s", {}, "h:1")
    trial_id, _ = _trial(store, sweep_id)
    assert store.lease.open_sweep("s", {"v": 2}, "runs/s", {}, "h:2") is None  # held by h:1: the second driver loses
    assert store.summary("s").spec == {"v": 1}  # ...and wrote nothing
    assert store.lease.open_sweep("s", {"v": 3}, "runs/s", {}, "h:2", replacing="h:1") == sweep_id  # h:1 seen dead
    assert store.summary("s").driver == "h:2" and store.summary("s").heartbeat_at is not None
    assert store.summary("s").spec == {"v": 3}
    assert store.control.stop_requests(sweep_id) == (False, set())
    assert store.control.request_stop("s", "v1-r8") and not store.control.request_stop("s", "nope")
    assert store.control.stop_requests(sweep_id) == (False, {trial_id})
    store.control.request_stop("s")
    assert store.control.stop_requests(sweep_id) == (True, {trial_id})
    store.lease.release_sweep(sweep_id, "h:1")  # not the holder: nothing happens
    assert store.summary("s").driver == "h:2"
    store.lease.release_sweep(sweep_id, "h:2")
    assert store.summary("s").driver is None
    store.records.mark_running(trial_id, "h:3")
    assert store.lease.interrupt_unfinished("s", "driver gone", None) == ["v1-r8"]
    [t] = store.summary("s").trials
    assert (t.status, t.error, t.worker, t.attempts) == ("interrupted", "driver gone", "h:3", 1)


def test_a_0_1_store_is_upgraded_in_place(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the 0.1 layout, abridged to what the upgrade touches
        db.executescript("""
            CREATE TABLE sweeps (id INTEGER PRIMARY KEY, name VARCHAR(200) UNIQUE, spec JSON, run_dir TEXT,
                                 notes JSON, created_at DATETIME);
            CREATE TABLE trials (id INTEGER PRIMARY KEY, sweep_id INTEGER REFERENCES sweeps(id), name VARCHAR(200),
                                 kind VARCHAR(20), params JSON, config JSON, content_key VARCHAR(64),
                                 status VARCHAR(20), started_at DATETIME, finished_at DATETIME, runtime_s FLOAT,
                                 timings JSON, adapter_dir TEXT, error TEXT);
            CREATE TABLE metrics (id INTEGER PRIMARY KEY, trial_id INTEGER REFERENCES trials(id), name VARCHAR(100),
                                  step INTEGER, value FLOAT);
            CREATE TABLE predictions (id INTEGER PRIMARY KEY, trial_id INTEGER REFERENCES trials(id),
                                      example_id VARCHAR(100), prediction TEXT, reference TEXT, new_tokens INTEGER,
                                      scores JSON);
            INSERT INTO sweeps VALUES (1, 'old', '{}', 'runs/old', '{}', '2026-01-01 00:00:00');
            INSERT INTO trials VALUES (1, 1, 'v1-r8', 'trial', '{"prompt": "v1"}', '{}', 'k', 'completed', NULL,
                                       NULL, 9.5, '{}', NULL, NULL);
            INSERT INTO metrics VALUES (1, 1, 'final/rougeL', 32, 0.27);
        """)
    store = Store(f"sqlite:///{path}")
    [t] = store.summary("old").trials
    assert (t.name, t.status, t.metrics, t.attempts, t.environment) == ("v1-r8", "completed", {"rougeL": 0.27}, 0, None)
    import optuna  # the point of the rename: Optuna's own `trials` table now fits beside ours

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(storage=f"sqlite:///{path}", study_name="fits")
    assert Store(f"sqlite:///{path}").summary("old").trials[0].metrics == {"rougeL": 0.27}


def _columns(url: str) -> dict[str, set[str]]:
    from sqlalchemy import create_engine, inspect

    tables = inspect(create_engine(url))
    return {t: {c["name"] for c in tables.get_columns(t)} for t in tables.get_table_names() if t.startswith("sweep")}


def _revision(url: str) -> str | None:
    from sqlalchemy import create_engine

    from results.migrate import VERSION_TABLE

    with create_engine(url).connect() as connection:
        return connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def _layout_at(revision: str, url: str) -> None:
    """The tables as migrations up to `revision` leave them, without the version table: a store written by the
    version before Alembic had exactly these (its hand-written upgrades ended at 0003's columns)."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from results.migrate import VERSION_TABLE, _config

    with create_engine(url).begin() as connection:
        command.upgrade(_config(connection), revision)
        connection.execute(text(f"DROP TABLE {VERSION_TABLE}"))


def _second_url(url: str, request) -> str:
    """Another empty store on the same backend as `url`."""
    if url.startswith("sqlite"):
        return url.replace("results.db", "second.db")
    return request.getfixturevalue("postgres").new_database()


def test_a_store_written_before_migrations_is_stamped_and_upgraded_to_the_orm_layout(store_url, request):
    from results.migrate import head

    before = store_url  # the layout of the version before Alembic: 0003's, no stamp
    _layout_at("0003", before)
    fresh = _second_url(store_url, request)
    Store(fresh)
    store = Store(before)
    sweep_id = store.lease.open_sweep("s", {}, "runs/s", {})
    trial_id, _ = _trial(store, sweep_id)
    store.records.end_trial(trial_id, "failed", "boom")
    assert _revision(before) == _revision(fresh) == head() == "0004"
    assert _columns(before) == _columns(fresh)
    assert Store(before).summary("s").trials[0].error == "boom"  # opened again: nothing to do, nothing lost


def test_the_0_1_layout_upgrades_through_every_migration_to_what_the_orm_creates(tmp_path):
    test_a_0_1_store_is_upgraded_in_place(tmp_path)
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    Store(fresh)
    upgraded = f"sqlite:///{tmp_path / 'old.db'}"
    assert _columns(upgraded) == _columns(fresh) and _revision(upgraded) == "0004"


def test_sweep_stop_never_clears_a_driver_that_claimed_the_sweep_after_it_looked(store):
    sweep_id = store.lease.open_sweep("s", {}, "runs/s", {}, "h:dead")
    trial_id, _ = _trial(store, sweep_id)
    store.records.mark_running(trial_id, "h:9")
    seen = store.summary("s").driver  # `sweep stop` reads the dead driver...
    assert store.lease.open_sweep("s", {}, "runs/s", {}, "h:new", replacing=seen) == sweep_id  # ...a new run claims it
    assert store.lease.interrupt_unfinished("s", "its driver was gone", seen) is None  # ...and stop changes nothing
    assert store.summary("s").driver == "h:new" and store.summary("s").trials[0].status == "running"


def test_two_first_runs_at_the_same_instant_have_one_winner(store_url):
    import threading

    url = store_url
    Store(url)  # the tables exist; the sweep does not
    barrier, results = threading.Barrier(2), {}

    def first_run(driver: str) -> None:
        store = Store(url)  # its own engine and connections, as two processes have
        barrier.wait()
        results[driver] = store.lease.open_sweep("s", {"by": driver}, "runs/s", {}, driver)

    threads = [threading.Thread(target=first_run, args=(f"h:{i}",)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [d for d, sweep_id in results.items() if sweep_id is not None]
    assert len(results) == 2 and len(winners) == 1, results
    summary = Store(url).summary("s")
    assert summary.driver == winners[0] and summary.spec == {"by": winners[0]}

"""A store a team shares: a driver on one machine, commands from another process, on SQLite and on a real
PostgreSQL server; and a store another process holds locked, which the store waits for (with a message and a
limit) instead of failing at the first busy error."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator.planning.loading import parse_spec
from orchestrator.driver.sweep import run_sweep
from results.busy import StoreLocked
from results.store import Store
from tests.conftest import tiny_spec
from tests.scripted import HANG, Call, Finish, ScriptedBackend
from tests.test_faults import training, trials_of, wait_for
from trainer.events import Metric
from trainer.result import TrialResult

SWEEP_CLI = str(Path(sys.executable).parent / "sweep")
LOCK_HOLDER = str(Path(__file__).parent / "lock_holder.py")


def _spec(store_url: str, tiny_model_dir, local_data, tmp_path, steps: int):
    raw = tiny_spec(tiny_model_dir, *local_data, tmp_path)
    raw["search"] = {"grid": {"training.max_steps": [steps]}, "baselines": False}
    raw["prompt"] = "v1"
    raw["output"]["store"] = store_url
    return parse_spec(raw)


def _script(cfg):
    """The long trial trains one step and then runs until stopped; any other trains its steps and finishes."""
    steps = cfg.training.max_steps
    if steps == 5000:
        return [Metric("train/loss", 1, 1.0), HANG]
    return [Metric("train/loss", step, 1.0 / step) for step in range(1, steps + 1)] + [Finish({"rougeL": 0.5})]


def _sweep(*args: str) -> subprocess.CompletedProcess:
    """The `sweep` command in a process of its own, as on a laptop while the driver runs on a GPU box."""
    return subprocess.run([SWEEP_CLI, *args], capture_output=True, text=True, timeout=120)


def test_a_live_driver_acts_on_status_clone_and_stop_from_another_process(store_url, tiny_model_dir, local_data,
                                                                           tmp_path):
    spec = _spec(store_url, tiny_model_dir, local_data, tmp_path, 5000)
    store = Store(spec.output.store_url())
    url = ["--store", store.url]
    outcome = {}
    driver = threading.Thread(target=lambda: outcome.update(
        done=run_sweep(spec, store, ScriptedBackend(_script), show_progress=False)), daemon=True)
    driver.start()
    wait_for(lambda: training(store, "max_steps5000"), timeout_s=60, what="the long trial to train")

    status = _sweep("status", "tiny", "--format", "json", *url)
    assert status.returncode == 0, status.stderr
    seen = json.loads(status.stdout)
    assert seen["driver_alive"] and [(t["name"], t["state"]) for t in seen["trials"]] == [("max_steps5000", "running")]

    clone = _sweep("clone", "tiny", "max_steps5000", "--set", "training.max_steps=3", "--name", "short", *url)
    assert clone.returncode == 0, clone.stderr
    wait_for(lambda: trials_of(store).get("short") and trials_of(store)["short"].status == "completed",
             timeout_s=60, what="the clone, run by the live driver")
    stop = _sweep("stop", "tiny", "max_steps5000", *url)
    assert stop.returncode == 0, stop.stderr
    driver.join(timeout=60)
    assert outcome["done"].completed == ["short"] and outcome["done"].interrupted == ["max_steps5000"]
    short = trials_of(store)["short"]
    assert short.metrics == {"rougeL": 0.5} and short.origin == "clone" and short.last_step == 3
    assert [step for name, step, _ in store.curves(short.id) if name == "train/loss"] == [1, 2, 3]


def _hold_lock(url: str, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, LOCK_HOLDER, url, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_locked_store_makes_a_sweep_wait_and_nothing_is_lost(store_url, tiny_model_dir, local_data, tmp_path,
                                                               capfd):
    """Another process locks the store while a trial reports its steps: the driver says so once, waits, and
    goes on; every curve point and the result land."""
    spec = _spec(store_url, tiny_model_dir, local_data, tmp_path, 40)
    store = Store(spec.output.store_url())
    lock_s, holders = 3.0, []

    def lock_once(cfg):  # the trial's items, with the store locked once its first five steps are reported
        items = _script(cfg)
        return items[:5] + [Call(lambda: holders.append(_hold_lock(store.url, lock_s)))] + items[5:]

    started = time.monotonic()
    outcome = run_sweep(spec, store, ScriptedBackend(lock_once), show_progress=False)
    assert len(holders) == 1 and holders[0].wait(timeout=30) == 0
    assert outcome.completed == ["max_steps40"] and time.monotonic() - started >= lock_s
    err = capfd.readouterr().err
    assert err.count("is locked by another process") == 1 and "waiting up to 300 s ($QLORA_SWEEP_STORE_WAIT_S)" in err
    [trial] = store.summary("tiny").trials
    assert trial.metrics == {"rougeL": 0.5}
    assert sorted(step for name, step, _ in store.curves(trial.id) if name == "train/loss") == list(range(1, 41))


def test_a_store_locked_past_the_limit_fails_the_call_clearly_and_writes_nothing(store_url):
    store = Store(store_url, lock_wait_s=1.0)
    sweep_id = store.lease.open_sweep("s", {}, "runs/s", {}, "h:1")
    holder = _hold_lock(store.url, 8.0)
    writes = {"register_trial": lambda: store.records.register_trial(sweep_id, "t", "trial", {}, {}, "k"),
              "request_stop": lambda: store.control.request_stop("s"),  # every part of the store waits alike
              "release_sweep": lambda: store.lease.release_sweep(sweep_id, "h:1")}
    try:
        for name, write in writes.items():
            with pytest.raises(StoreLocked, match=rf"stayed locked by another process for 1 s \({name}\); "
                                                  r"nothing of this call was written\. Fix: end the process"):
                write()
    finally:
        holder.kill()
        holder.wait()
    assert store.summary("s").trials == [] and store.control.stop_requests(sweep_id) == (False, set())
    trial_id, _ = store.records.register_trial(sweep_id, "t", "trial", {}, {}, "k")  # free again: it works
    store.records.complete_trial(trial_id, TrialResult({"rougeL": 0.3}, [], None, {}), 1.0)
    assert store.summary("s").trials[0].metrics == {"rougeL": 0.3}

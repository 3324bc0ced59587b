"""Fault injection with real Ray, real SQLite and real tiny trials: a trial running out of memory (retried by
the driver; this one's trials run in this process), a worker process killed mid-trial, `sweep stop` from another
terminal, and the orchestrator itself stopped by Ctrl-C or killed with SIGKILL and then re-run. Each checks that no
finished trial is lost, no row is duplicated, and every trial ends in a truthful state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.search.strategies import expand
from orchestrator.backends.ray_backend import DEFAULT_TRIAL_FN
from orchestrator.planning.loading import parse_spec
from orchestrator.driver.sweep import run_sweep
from results.store import Store
from tests.conftest import tiny_spec
from trainer.data import load_trial_data
from trainer.trial import run_trial

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def raw(tiny_model_dir, local_data, tmp_path) -> dict:
    spec = tiny_spec(tiny_model_dir, *local_data, tmp_path)
    spec["search"]["baselines"] = False
    spec["prompt"] = "v1"
    return spec


def wait_for(condition, timeout_s: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def trials_of(store: Store, sweep: str = "tiny") -> dict:
    summary = store.summary(sweep)
    return {t.name: t for t in summary.trials} if summary else {}


def training(store: Store, name: str, min_step: int = 1):
    """The trial when it is running and has finished at least `min_step` optimizer steps."""
    t = trials_of(store).get(name)
    return t if t is not None and t.status == "running" and t.worker and (t.last_step or 0) >= min_step else None


def test_out_of_memory_is_retried_with_half_the_micro_batch(inline_backend, raw, monkeypatch):
    """The driver's retry of a trial that ran out of memory (its trials in this process: tests/inline.py)."""
    from tests.faults import out_of_memory_above_batch_1

    monkeypatch.setattr(inline_backend, "run_trial", out_of_memory_above_batch_1)
    raw["resources"] = {"retry_out_of_memory": True}
    raw["search"]["grid"] = {"prompt": ["v1"]}
    spec = parse_spec(raw)
    store = Store(spec.output.store_url())

    outcome = run_sweep(spec, store, inline_backend, show_progress=False)

    assert outcome.completed == ["v1"] and not outcome.failed
    summary = store.summary("tiny")
    for t in summary.trials:
        assert t.attempts == 2 and "micro_batch_size=1, gradient_accumulation_steps=2" in t.error
        losses = [(step, value) for name, step, value in store.curves(t.id) if name == "train/loss"]
        assert (1, 9.0) not in losses and [s for s, _ in losses] == [1, 2]  # only the retry's curve, once
    with store.session() as s:
        from results.tables import TrialRow

        configs = [row.config["training"] for row in s.query(TrialRow)]
    assert {(c["micro_batch_size"], c["gradient_accumulation_steps"]) for c in configs} == {(1, 2)}

    raw["resources"] = {"retry_out_of_memory": False}
    raw["name"] = "no-retry"
    failed = run_sweep(parse_spec(raw), store, inline_backend, show_progress=False)
    assert failed.failed == ["v1"]
    assert all("CUDA out of memory" in t.error for t in store.summary("no-retry").trials)


def test_worker_killed_mid_trial_fails_alone_then_resumes_from_its_checkpoint(backend, raw):
    raw["search"]["grid"] = {"training.max_steps": [60, 2]}
    raw["training"]["checkpoint_interval_steps"] = 5
    spec = parse_spec(raw)
    store = Store(spec.output.store_url())
    assert backend.trial_fn == DEFAULT_TRIAL_FN
    killed = {}

    def kill_long_trial():  # past step 6: the checkpoint of step 5 is complete before step 6 is logged
        t = wait_for(lambda: training(store, "max_steps60", 6), what="the long trial past its first checkpoint")
        killed["at_step"] = t.last_step
        os.kill(int(t.worker.rsplit(":", 1)[1]), signal.SIGKILL)

    killer = threading.Thread(target=kill_long_trial, daemon=True)
    killer.start()
    outcome = run_sweep(spec, store, backend, show_progress=False)
    killer.join()

    assert outcome.failed == ["max_steps60"] and outcome.completed == ["max_steps2"]
    t = trials_of(store)["max_steps60"]
    assert t.status == "failed" and "died" in t.error.lower()  # Ray: the worker died unexpectedly
    assert 6 <= killed["at_step"] <= t.last_step < 60  # its partial curve is kept

    again = run_sweep(spec, store, backend, show_progress=False)  # the same spec, run again
    assert again.completed == ["max_steps60"] and again.reused == ["max_steps2"]
    t = trials_of(store)["max_steps60"]
    assert_resumed_without_duplicates(store, t, 60)
    # The same metrics as the same trial run straight through, in this process.
    [planned] = [p for p in expand(spec) if p.name == "max_steps60"]
    straight = run_trial(planned.config, load_trial_data(planned.config.dataset), Path(raw["output"]["run_dir"]) / "x",
                         lambda event: None, num_threads=1)
    assert t.metrics == straight.metrics


def assert_resumed_without_duplicates(store: Store, t, max_steps: int) -> None:
    assert t.status == "completed" and t.resumed_from_step and t.resumed_from_step % 5 == 0
    losses = [step for name, step, _ in store.curves(t.id) if name == "train/loss"]
    assert losses == list(range(1, max_steps + 1))  # every step once: nothing lost, nothing twice
    assert f"resumed from step {t.resumed_from_step}" in cli("status", "tiny", "--store", store.url).stdout


def test_sweep_stop_from_another_terminal_interrupts_one_trial(backend, raw, monkeypatch):
    monkeypatch.setattr(backend, "trial_fn", "tests.faults:scripted")  # the driver's handling: no model needed
    raw["search"]["grid"] = {"training.max_steps": [300, 2]}  # stopped within seconds, long before step 300
    spec = parse_spec(raw)
    store = Store(spec.output.store_url())
    answers = []

    def stop_long_trial():
        wait_for(lambda: training(store, "max_steps300"), what="the long trial to train")
        answers.append(main(["stop", "tiny", "max_steps300", "--store", store.url]))

    stopper = threading.Thread(target=stop_long_trial, daemon=True)
    stopper.start()
    outcome = run_sweep(spec, store, backend, show_progress=False)
    stopper.join()

    assert answers == [0]
    assert outcome.interrupted == ["max_steps300"] and outcome.completed == ["max_steps2"]
    t = trials_of(store)["max_steps300"]
    assert (t.status, t.error) == ("interrupted", "stopped by `sweep stop` for this trial")
    assert store.summary("tiny").driver is None  # released: nothing holds the sweep now


def write_spec(raw: dict, tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def start_cli(spec: Path, tmp_path: Path, log: str) -> subprocess.Popen:
    # Output to a file: Ray helper processes may outlive a killed driver and hold a pipe open.
    out = open(tmp_path / log, "w")
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--quiet", "--num-cpus", "2"],
                            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def rerun_and_check(spec: Path, tmp_path: Path, store: Store, before: dict) -> subprocess.CompletedProcess:
    """Re-run the spec: finished trials are kept as they were, the rest run, no row appears twice."""
    again = start_cli(spec, tmp_path, "rerun.log")
    assert again.wait(timeout=600) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    after = trials_of(store)
    assert sorted(after) == sorted(before) and all(t.status == "completed" for t in after.values())
    for name, t in before.items():
        if t.status == "completed":  # not re-run: same runtime, same start
            assert (after[name].runtime_s, after[name].started_at) == (t.runtime_s, t.started_at)
    return again


@pytest.mark.slow  # `sweep run` processes, each with its own Ray
def test_ctrl_c_then_sigkill_of_the_orchestrator_then_rerun_loses_nothing(raw, tmp_path):
    """One sweep stopped twice, as a user's session might be: Ctrl-C marks the running trials interrupted; the
    re-run resumes the long trial from its checkpoint; SIGKILL of that driver leaves it running (orphaned) in the
    store; the third run resumes it again and finishes everything, every step logged once."""
    # 240 steps of the tiny model: still training when the 2-step trial is done, and when the second run is
    # 60 steps past where the first stopped (the first stops past 60, so the kill comes near step 130).
    raw["search"]["grid"] = {"training.max_steps": [2, 240, 40]}
    raw["resources"] = {"cpus_per_trial": 1}
    raw["training"]["checkpoint_interval_steps"] = 50
    spec = write_spec(raw, tmp_path)
    store = Store(raw["output"]["store"])
    first = trials_of_after_ctrl_c(spec, tmp_path, store)
    status = cli("status", "tiny", "--store", store.url)
    assert "not running; 2 trial(s) would run again" in status.stdout, status.stdout

    driver = start_cli(spec, tmp_path, "second.log")  # resumes max_steps240 from step 50 or later
    wait_for(lambda: training(store, "max_steps240", first["max_steps240"].last_step + 60),
             what="the resumed trial past its next checkpoint")
    driver.kill()  # SIGKILL: no handler runs, the store keeps whatever the driver last wrote
    driver.wait(timeout=60)
    before = trials_of(store)
    assert before["max_steps2"].status == "completed" and before["max_steps240"].status == "running"
    resumed = before["max_steps240"].resumed_from_step  # the second run resumed from the Ctrl-C's checkpoint
    assert resumed and resumed % 50 == 0 and resumed <= first["max_steps240"].last_step
    assert (before["max_steps2"].runtime_s, before["max_steps2"].started_at) == \
        (first["max_steps2"].runtime_s, first["max_steps2"].started_at)  # the second run kept it as it was
    status = cli("status", "tiny", "--store", store.url)
    assert "is gone" in status.stdout and "running (orphaned)" in status.stdout, status.stdout

    rerun_and_check(spec, tmp_path, store, before)
    assert_resumed_without_duplicates(store, trials_of(store)["max_steps240"], 240)


def trials_of_after_ctrl_c(spec: Path, tmp_path: Path, store: Store) -> dict:
    """Run the spec, SIGINT the driver once one trial is done and the long one is past its first checkpoint."""
    driver = start_cli(spec, tmp_path, "first.log")
    wait_for(lambda: trials_of(store).get("max_steps2") and trials_of(store)["max_steps2"].status == "completed"
             and training(store, "max_steps240", 60), what="one trial done and one past its first checkpoint")
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=120) == 130, (tmp_path / "first.log").read_text()[-3000:]
    before = trials_of(store)
    assert before["max_steps2"].status == "completed"
    assert before["max_steps240"].status == "interrupted" and "SIGINT" in before["max_steps240"].error
    assert before["max_steps40"].status == "interrupted"  # queued or just started: either way not done
    assert store.summary("tiny").driver is None
    return before


def test_a_sweep_held_by_a_live_driver_is_not_run_twice(raw, tmp_path, capsys):
    import socket

    spec = write_spec(raw, tmp_path)
    store = Store(raw["output"]["store"])
    holder = f"{socket.gethostname()}:{os.getppid()}"  # a live process on this host: the pytest parent
    sweep_id = store.lease.open_sweep("tiny", {}, "runs/tiny", {}, holder)

    assert main(["run", str(spec), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"is being run by {holder}" in err and "nothing was run" in err
    assert store.summary("tiny").trials == []  # nothing registered

    store.lease.release_sweep(sweep_id, holder)
    dead = f"{socket.gethostname()}:999999999"  # no such pid
    assert store.lease.open_sweep("tiny", {}, "runs/tiny", {}, dead) == sweep_id
    assert "is gone" in cli("status", "tiny", "--store", store.url).stdout


def test_a_pack_loses_one_trial_to_sweep_stop_then_its_worker_then_all_resume_in_a_new_pack(backend, raw):
    """Three trials in one worker (resources.trials_per_worker): one stopped leaves the pack and the others go on;
    then the worker is killed; the next `sweep run` resumes all three from their own checkpoints, in a new pack."""
    raw["search"]["grid"] = {"lora.rank": [4, 8, 16]}
    raw["training"].update(max_steps=40, checkpoint_interval_steps=2)
    raw["resources"] = {"trials_per_worker": 3}
    spec = parse_spec(raw)
    store = Store(spec.output.store_url())
    seen = {}

    def stop_one_then_kill_the_worker():
        stopped = wait_for(lambda: training(store, "r8", 3), what="r8 past its first checkpoint")
        store.control.request_stop("tiny", "r8")
        wait_for(lambda: trials_of(store)["r8"].status == "interrupted", what="r8 out of its pack")
        mate = wait_for(lambda: training(store, "r4", stopped.last_step + 2), what="its mates going on")
        seen["worker"], seen["mate_step"] = mate.worker, mate.last_step
        os.kill(int(mate.worker.split(",")[0].rsplit(":", 1)[1]), signal.SIGKILL)

    killer = threading.Thread(target=stop_one_then_kill_the_worker, daemon=True)
    killer.start()
    outcome = run_sweep(spec, store, backend, show_progress=False)
    killer.join()

    assert outcome.interrupted == ["r8"] and sorted(outcome.failed) == ["r16", "r4"]
    trials = trials_of(store)
    assert trials["r8"].error == "stopped by `sweep stop` for this trial"
    assert seen["worker"].endswith("pack of 3") and all("died" in trials[n].error.lower() for n in outcome.failed)

    again = run_sweep(spec, store, backend, show_progress=False)
    assert sorted(again.completed) == ["r16", "r4", "r8"]
    trials = trials_of(store)
    assert len({t.worker for t in trials.values()}) == 1  # one new pack
    for t in trials.values():
        assert t.resumed_from_step and t.resumed_from_step % 2 == 0
        losses = [step for name, step, _ in store.curves(t.id) if name == "train/loss"]
        assert losses == list(range(1, 41))  # every step once: nothing lost, nothing twice
        assert Path(t.adapter_dir, "adapter_model.safetensors").is_file()

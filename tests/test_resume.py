"""Mid-trial checkpoints with a real tiny trial (NF4 + LoRA + SFTTrainer): an attempt killed after a
checkpoint continues from it and ends with the same final metrics and adapter as an uninterrupted run."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from orchestrator.search.strategies import expand
from orchestrator.planning.loading import parse_spec
from tests.conftest import tiny_spec
from trainer import checkpoints
from trainer.data import load_trial_data
from trainer.events import Event, Metric
from trainer.trial import run_trial


class Killed(Exception):
    """Stands in for the worker dying: raised from the report callback at a chosen training step."""


@pytest.fixture(params=["float32", "bfloat16"])
def cfg(request, tiny_model_dir, local_data, tmp_path):
    """In each dtype a trial can resolve to on a CPU (`auto` is bfloat16 on native-bf16 CPUs and GPUs)."""
    raw = tiny_spec(tiny_model_dir, *local_data, tmp_path)
    raw["quantization"]["compute_dtype"] = request.param
    raw["training"].update(max_steps=6, checkpoint_interval_steps=2, eval_interval_steps=3)
    raw["lora"]["dropout"] = 0.1  # dropout draws from the RNG: its state must be restored too
    return expand(parse_spec(raw))[0].config


def run(cfg, data, out_dir, kill_at_step: int | None = None):
    events: list[Event] = []

    def report(event: Event) -> None:
        events.append(event)
        if isinstance(event, Metric) and event.name == "train/loss" and event.step == kill_at_step:
            raise Killed(f"killed at step {kill_at_step}")

    return run_trial(cfg, data, out_dir, report, num_threads=1), events


def test_killed_trial_resumes_from_its_last_checkpoint_with_identical_results(cfg, tmp_path):
    data = load_trial_data(cfg.dataset)
    reference, straight_events = run(cfg, data, tmp_path / "straight")

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        run(cfg, data, out, kill_at_step=5)  # checkpoints at 2 and 4; 5 is lost
    key = checkpoints.resume_key(cfg, data)
    path, step = checkpoints.last_checkpoint(out, key)
    assert step == 4 and sorted(p.name for p in (out / "trainer").glob("checkpoint-*")) == [
        "checkpoint-2", "checkpoint-4"]  # the last, and the one before it as a fallback
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    with (damaged / "trainer" / "checkpoint-4" / "optimizer.pt").open("r+b") as handle:
        handle.truncate(100)  # a copy cut short, a bad disk

    for folder in (out, damaged):  # the damaged copy goes on from step 2: the same results either way
        resumed, events = run(cfg, data, folder)
        check_same_as_uninterrupted(resumed, events, reference, straight_events)
        assert not list((folder / "trainer").glob("checkpoint-*"))  # a finished trial keeps no checkpoint


def check_same_as_uninterrupted(resumed, events, reference, straight_events) -> None:
    """The resumed attempt reports the checkpoint's points again (the driver may have missed them), then the
    steps after it: every point once, each equal to the uninterrupted run's; the same adapter, bit for bit."""
    def points(reported: list[Event]) -> list[tuple]:
        return [(e.name, e.step, e.value) for e in reported if isinstance(e, Metric)]

    assert points(events) == points(straight_events)
    assert [step for name, step, _ in points(events) if name == "train/loss"] == [1, 2, 3, 4, 5, 6]
    assert resumed.metrics == reference.metrics
    assert [p["prediction"] for p in resumed.predictions] == [p["prediction"] for p in reference.predictions]
    mine, theirs = load_file(f"{resumed.adapter_dir}/adapter_model.safetensors"), \
        load_file(f"{reference.adapter_dir}/adapter_model.safetensors")
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)  # bit for bit, on CPU in float32 and bfloat16


def test_damaged_checkpoints_are_found_and_the_one_before_or_step_0_is_said_and_used(cfg, tmp_path, capsys):
    data = load_trial_data(cfg.dataset)
    out = tmp_path / "t"
    with pytest.raises(Killed):
        run(cfg, data, out, kill_at_step=5)
    key, ckpt = checkpoints.resume_key(cfg, data), out / "trainer"
    capsys.readouterr()
    with (ckpt / "checkpoint-4" / "adapter_model.safetensors").open("r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 0xFF]))  # one flipped byte, same size: only the CRC sees it
    assert checkpoints.latest_complete(out)[1] == 2  # a warm start would snapshot the good one
    assert checkpoints.last_checkpoint(out, key) == (ckpt / "checkpoint-2", 2)
    assert "checkpoint of step 4 is damaged (adapter_model.safetensors changed since it was saved (CRC-32)); " \
           "it is deleted and the trial resumes from the checkpoint of step 2" in capsys.readouterr().err
    (ckpt / "checkpoint-2" / "scheduler.pt").unlink()
    assert checkpoints.last_checkpoint(out, key) == (None, 0)
    assert "checkpoint of step 2 is damaged (scheduler.pt is missing); it is deleted and the trial resumes " \
           "from step 0" in capsys.readouterr().err
    (ckpt / "checkpoint-6").mkdir(parents=True)
    (ckpt / "checkpoint-6" / "complete.json").write_text('{"resume_key": "')  # a marker cut short
    assert checkpoints.last_checkpoint(out, key) == (None, 0) and not list(ckpt.glob("checkpoint-*"))


def test_a_save_that_runs_out_of_space_fails_the_trial_naming_the_step_and_the_one_before_resumes(
        tiny_model_dir, local_data, tmp_path, capsys, monkeypatch):
    """The trial's folder on a 6 MiB tmpfs: a tiny trial's checkpoint is about 3.7 MB (mostly its tokenizer), so
    the save of step 4 cannot fit beside step 2's. Where mounting is not allowed (no root), the second save's
    write fails with ENOSPC as a full disk's would."""
    from trainer.events import FailureKind, failure_kind

    raw = tiny_spec(tiny_model_dir, *local_data, tmp_path)
    raw["training"].update(max_steps=6, checkpoint_interval_steps=2)
    cfg = expand(parse_spec(raw))[0].config
    data = load_trial_data(cfg.dataset)
    reference, straight_events = run(cfg, data, tmp_path / "straight")
    out = tmp_path / "small"
    out.mkdir()
    mounted = _mount(out, "size=6m")
    if not mounted:
        _fail_writes_into(monkeypatch, "checkpoint-4")
    try:
        with pytest.raises(checkpoints.DiskFull) as info:
            run(cfg, data, out)
        assert str(info.value).startswith(f"[Errno 28] disk full while saving step 4 under {out}; the checkpoint "
                                          "of step 2 stays resumable. Fix: free space there")
        assert failure_kind(info.value) is FailureKind.DISK_FULL
        assert [p.name for p in (out / "trainer").glob("checkpoint-*")] == ["checkpoint-2"]  # the partial: removed
        if mounted:
            assert _mount(out, "remount,size=64m")  # space freed
        else:
            monkeypatch.undo()
        capsys.readouterr()
        resumed, events = run(cfg, data, out)
        assert "resuming from the checkpoint of step 2" in capsys.readouterr().out
        check_same_as_uninterrupted(resumed, events, reference, straight_events)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(out)], check=False)


def _mount(folder, options: str) -> bool:
    """A tmpfs at `folder` with `options` (needs root); False where mounting is not allowed."""
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def _fail_writes_into(monkeypatch, folder_name: str) -> None:
    import errno

    real_save = torch.save

    def full_disk_save(obj, f, *args, **kwargs):
        if folder_name in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_save)


def test_checkpoint_of_another_config_or_incomplete_is_never_resumed(cfg, tmp_path):
    data = load_trial_data(cfg.dataset)
    out = tmp_path / "t"
    with pytest.raises(Killed):
        run(cfg, data, out, kill_at_step=3)
    (out / "trainer" / "checkpoint-9").mkdir()  # a save cut short: no complete.json
    other = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, learning_rate=1e-3))
    assert checkpoints.last_checkpoint(out, checkpoints.resume_key(other, data)) == (None, 0)
    assert not list((out / "trainer").glob("checkpoint-*"))  # both were deleted: neither can ever resume
    halved = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, micro_batch_size=1,
                                                                  gradient_accumulation_steps=2))
    assert checkpoints.resume_key(halved, data) == checkpoints.resume_key(cfg, data)  # an OOM retry resumes


def test_a_checkpoint_of_a_model_since_rewritten_at_the_same_path_is_never_resumed(tiny_model_dir, local_data,
                                                                                   tmp_path):
    """Content key and resume key are one identity (trainer.identity): both follow the model's files."""
    import shutil

    from safetensors.torch import save_file

    from trainer.identity import content_key
    from trainer.models import model_identity

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    raw = tiny_spec(model_dir, *local_data, tmp_path)
    raw["training"].update(max_steps=4, checkpoint_interval_steps=2)
    cfg = expand(parse_spec(raw))[0].config
    data = load_trial_data(cfg.dataset)
    out = tmp_path / "t"
    with pytest.raises(Killed):
        run(cfg, data, out, kill_at_step=3)
    old_resume, old_content = checkpoints.resume_key(cfg, data), content_key(cfg, data, model_identity(str(model_dir)))
    assert checkpoints.last_checkpoint(out, old_resume)[1] == 2

    weights = load_file(model_dir / "model.safetensors")
    save_file({k: v * 1.5 for k, v in weights.items()}, model_dir / "model.safetensors", metadata={"format": "pt"})
    stat = (model_dir / "model.safetensors").stat()  # a later mtime even on a coarse-clock filesystem
    os.utime(model_dir / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert content_key(cfg, data, model_identity(str(model_dir))) != old_content
    assert checkpoints.resume_key(cfg, data) != old_resume
    def losses(events: list[Event]) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in events if isinstance(e, Metric) and e.name == "train/loss"]

    again, fresh = run(cfg, data, out)[1], run(cfg, data, tmp_path / "fresh")[1]
    # Trained from step 1 on the new weights: had checkpoint-2 been resumed, steps 1-2 would be the old model's.
    assert [s for s, _ in losses(again)] == [1, 2, 3, 4] and losses(again) == losses(fresh)

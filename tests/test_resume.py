"""Mid-trial checkpoints with a real tiny trial (NF4 + LoRA + SFTTrainer): an attempt killed after a
checkpoint continues from it and ends with the same final metrics and adapter as an uninterrupted run."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from safetensors.torch import load_file

from orchestrator.search import expand
from orchestrator.loading import parse_spec
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
    assert step == 4 and [p.name for p in (out / "trainer").glob("checkpoint-*")] == ["checkpoint-4"]  # only the last

    resumed, events = run(cfg, data, out)
    # It reports the checkpoint's points again (the driver may have missed them), then steps 5 and 6: every
    # point once, each equal to the uninterrupted run's.
    def points(reported: list[Event]) -> list[tuple]:
        return [(e.name, e.step, e.value) for e in reported if isinstance(e, Metric)]

    assert points(events) == points(straight_events)
    assert [step for name, step, _ in points(events) if name == "train/loss"] == [1, 2, 3, 4, 5, 6]
    assert resumed.metrics == reference.metrics
    assert [p["prediction"] for p in resumed.predictions] == [p["prediction"] for p in reference.predictions]
    mine, theirs = load_file(f"{resumed.adapter_dir}/adapter_model.safetensors"), \
        load_file(f"{reference.adapter_dir}/adapter_model.safetensors")
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)  # bit for bit, on CPU in float32 and bfloat16
    assert not list((out / "trainer").glob("checkpoint-*"))  # a finished trial keeps no checkpoint


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

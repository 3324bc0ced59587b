"""Typed trial events: one wire encoding for every kind, and failure kinds read off exception types."""

from __future__ import annotations

import pytest

from trainer import events as ev

EVERY_KIND = [ev.Started("host:1", "node-a"), ev.Attempt(4), ev.Environment({"device": "cpu", "dtype": "bf16"}),
              ev.Phase("evaluate"), ev.Metric("eval/rougeL", 3, 0.25), ev.Checkpoint(8),
              ev.Budget(32), ev.Scores("eval/rougeL", 4, (0.5, 0.25)), ev.Left("asked to leave", "raised")]


@pytest.mark.parametrize("event", EVERY_KIND, ids=lambda e: type(e).__name__)
def test_every_event_survives_its_encoding_and_a_json_round_trip(event):
    import json

    wire = ev.encode(event)
    assert isinstance(wire["event"], str) and ev.decode(json.loads(json.dumps(wire))) == event


def test_an_unknown_event_tag_is_a_clear_error():
    with pytest.raises(ValueError, match=r"one of started, attempt, environment, step, metric, scores, checkpoint, budget, left; given 'nope'"):
        ev.decode({"event": "nope"})


def test_a_phase_is_one_of_the_named_steps():
    assert ev.Phase("evaluate").name is ev.Step.EVALUATE
    assert ev.encode(ev.Phase(ev.Step.TRAIN)) == {"event": "step", "name": "train"}
    with pytest.raises(ValueError, match="'tune' is not a valid Step"):
        ev.Phase("tune")


def test_failure_kinds_come_from_exception_types_not_messages():
    import ray.exceptions
    import torch

    assert ev.failure_kind(torch.OutOfMemoryError("no text to match")) is ev.FailureKind.OUT_OF_MEMORY
    assert ev.failure_kind(ray.exceptions.OutOfMemoryError("")) is ev.FailureKind.OUT_OF_MEMORY  # Ray's monitor
    assert ev.failure_kind(ray.exceptions.WorkerCrashedError()) is ev.FailureKind.WORKER_DIED
    assert ev.failure_kind(ev.TrialDiverged("diverged at step 3 (loss nan)")) is ev.FailureKind.DIVERGED
    assert ev.failure_kind(RuntimeError("CUDA out of memory, says the text")) is ev.FailureKind.RAISED
    wrapped = RuntimeError("in the worker")
    wrapped.cause = torch.OutOfMemoryError("")  # as Ray's RayTaskError carries the trial's own exception
    assert ev.failure_kind(wrapped) is ev.FailureKind.OUT_OF_MEMORY

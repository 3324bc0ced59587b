"""Packs (trainer.lockstep): trials trained in lockstep on one real 4-bit base, each held to its own run alone.

The three trials' runs alone are made once per dtype for the module (`alone`): every test compares a pack with
them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from orchestrator.planning.loading import parse_spec
from orchestrator.search.strategies import expand
from tests.conftest import tiny_spec, write_tiny_data
from trainer.data import load_trial_data
from trainer.events import Metric, TrialDiverged
from trainer.lockstep import LeftPack, PackTrial, run_pack
from trainer.trial import run_trial

# bfloat16, packed against alone, 3 trials x 4 steps: the largest relative difference of a logged loss was 2.6e-5
# on a 2-core AMD EPYC with AVX512-BF16 (4.7e-6 under the AVX2 imitation), of the held-out loss 1e-5; about 4x
# that is allowed. Greedy predictions may differ there (1 trial of 3 under the imitation); README "Packs".
BF16_RTOL = 1e-4
RTOL = {"float32": 1e-5, "bfloat16": BF16_RTOL}


def _three(tiny_model_dir, local_data, tmp_path, dtype: str, **training):
    """Three trials that differ in prompt, rank, learning rate, schedule, clipping and seed; a checkpoint every
    2 of their 4 steps."""
    spec = tiny_spec(tiny_model_dir, *local_data, tmp_path,
                     training={"max_steps": 4, "micro_batch_size": 2, "gradient_accumulation_steps": 2,
                               "learning_rate": "1e-2", "max_seq_length": 128, "checkpoint_interval_steps": 2,
                               **training})
    spec["quantization"]["compute_dtype"] = dtype
    spec["search"] = {"grid": {"prompt": ["v1", "v2"], "lora.rank": [4, 8]}}
    configs = [t.config for t in expand(parse_spec(spec))][:3]
    tweaks = [{}, {"learning_rate": 5e-3, "lr_scheduler": "constant", "seed": 7},
              {"max_grad_norm": 0.05, "weight_decay": 0.1, "seed": 3}]
    return [dataclasses.replace(c, training=dataclasses.replace(c.training, **t)) for c, t in zip(configs, tweaks)]


def _losses(events) -> list[float]:
    return [e.value for e in events if isinstance(e, Metric) and e.name == "train/loss"]


@pytest.fixture(scope="module")
def alone(tiny_model_dir, tmp_path_factory):
    """dtype -> (configs, data, [(events, result)] of each trial run alone), made on first use."""
    made: dict = {}

    def runs(dtype: str):
        if dtype not in made:
            tmp = tmp_path_factory.mktemp(f"alone-{dtype}")
            files = write_tiny_data(tmp)
            configs = _three(tiny_model_dir, files, tmp, dtype)
            data = load_trial_data(configs[0].dataset)
            done = []
            for i, c in enumerate(configs):
                events: list = []
                done.append((events, run_trial(c, data, tmp / f"alone{i}", events.append, num_threads=1)))
            made[dtype] = configs, data, done
        return made[dtype]

    return runs


def _pack(configs, data, folder: Path, indices, **kwargs):
    events = {i: [] for i in indices}
    results = run_pack([PackTrial(i, configs[i], data, folder / f"t{i}", events[i].append) for i in indices], 1,
                       **kwargs)
    return events, results


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_three_packed_trials_match_each_alone(alone, tmp_path, dtype):
    configs, data, runs = alone(dtype)
    events, packed = _pack(configs, data, tmp_path, range(3))
    for i, (alone_events, alone_result) in enumerate(runs):
        a, p = _losses(alone_events), _losses(events[i])
        assert len(a) == len(p) == 4
        assert p == pytest.approx(a, rel=RTOL[dtype]), (i, a, p)
        assert packed[i].metrics["eval_loss"] == pytest.approx(alone_result.metrics["eval_loss"], rel=RTOL[dtype])
        if dtype == "float32":
            assert [r["prediction"] for r in packed[i].predictions] == \
                [r["prediction"] for r in alone_result.predictions]
        assert packed[i].metrics["trainable_params"] == alone_result.metrics["trainable_params"]
    # The trials did differ: distinct curves, so a pack that trained one adapter for all would fail above.
    assert len({tuple(_losses(e)) for e, _ in runs}) == 3


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_pack_checkpoint_resumes_alone_or_in_another_pack_as_if_never_stopped(alone, tmp_path, dtype):
    configs, data, runs = alone(dtype)
    # Every trial asked to leave after step 2 (a worker lost after its checkpoint).
    asked = iter([{}, {}, {0: "stop", 1: "stop", 2: "stop"}])
    cut, first = _pack(configs, data, tmp_path, range(3), leaving=lambda: next(asked, {}))
    assert all(isinstance(r, LeftPack) for r in first.values())
    assert all(_losses(cut[i]) == pytest.approx(_losses(e)[:2], rel=RTOL[dtype]) for i, (e, _) in enumerate(runs))
    # Trial 0 resumes alone (the Trainer reads the pack's checkpoint), trials 1 and 2 in a new pack of two.
    again = {0: []}
    run_trial(configs[0], data, tmp_path / "t0", again[0].append, num_threads=1)
    again.update(_pack(configs, data, tmp_path, (1, 2))[0])
    for i, (alone_events, _) in enumerate(runs):
        steps = [e.step for e in again[i] if isinstance(e, Metric) and e.name == "train/loss"]
        assert steps == [1, 2, 3, 4]  # the checkpoint's points reported again, then steps 3 and 4, none twice
        assert _losses(again[i]) == pytest.approx(_losses(alone_events), rel=RTOL[dtype])


def test_a_diverging_trial_leaves_the_pack_and_the_others_go_on_as_alone(alone, tmp_path):
    configs, data, runs = alone("float32")
    blown = dataclasses.replace(configs[1], training=dataclasses.replace(configs[1].training, learning_rate=1e30,
                                                                         max_grad_norm=0.0))
    left = []
    events, results = _pack([configs[0], blown, configs[2]], data, tmp_path, range(3),
                            on_leave=lambda key, error: left.append((key, type(error).__name__)))
    assert left == [(1, "TrialDiverged")] and isinstance(results[1], TrialDiverged)
    assert len(_losses(events[1])) < 4
    for i in (0, 2):
        assert _losses(events[i]) == pytest.approx(_losses(runs[i][0]), rel=1e-5)
        assert results[i].adapter_dir and results[i].metrics["rougeL"] >= 0.0


@pytest.mark.skipif(not __import__("torch").cuda.is_available(),
                    reason="no CUDA device: what a pack saves on a GPU (one base in memory for all its trials) is "
                           "measured only there")
def test_on_a_gpu_a_pack_of_three_holds_less_memory_than_three_alone_and_matches_them(tiny_model_dir, local_data,
                                                                                       tmp_path):
    import torch

    configs = _three(tiny_model_dir, local_data, tmp_path, "bfloat16")
    data = load_trial_data(configs[0].dataset)
    alone_events, alone_peaks = [[] for _ in configs], []
    for i, c in enumerate(configs):
        torch.cuda.reset_peak_memory_stats()
        run_trial(c, data, tmp_path / f"alone{i}", alone_events[i].append, num_threads=1)
        alone_peaks.append(torch.cuda.max_memory_allocated())
    torch.cuda.reset_peak_memory_stats()
    packed_events = [[] for _ in configs]
    run_pack([PackTrial(i, c, data, tmp_path / f"packed{i}", packed_events[i].append) for i, c in enumerate(configs)], 1)
    assert torch.cuda.max_memory_allocated() < sum(alone_peaks)
    for i in range(3):
        assert _losses(packed_events[i]) == pytest.approx(_losses(alone_events[i]), rel=BF16_RTOL)

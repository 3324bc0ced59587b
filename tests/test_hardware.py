"""Hardware-aware precision: `compute_dtype: auto` decided by the function trials use, the real probe on
this CPU (and on an imitated AVX2-only one), and what a real trial records of where it ran."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from importlib import metadata

import pytest
import torch
from safetensors.torch import load_file

from orchestrator.search.strategies import expand
from orchestrator.planning.loading import parse_spec
from tests.conftest import REPO, tiny_spec
from trainer.data import load_trial_data
from trainer.events import Environment, Event, Phase
from trainer.hardware import EMULATED_SLOWDOWN, Device, probe_device, resolve_precision
from trainer.trial import run_trial

EMULATING_CPU = Device("cpu", "AMD EPYC", "ISA AVX2 (no bf16 flags), 1 thread(s)", bf16_native=False,
                       slowdown={"bfloat16": 58.0, "float16": 55.0})
NATIVE_BF16_CPU = Device("cpu", "Intel Xeon", "ISA AVX512 (avx512_bf16,amx_bf16), 1 thread(s)", bf16_native=True,
                         slowdown={"bfloat16": 0.4, "float16": 9.0})
AMPERE = Device("cuda", "NVIDIA A100", "sm_80, 40.0 GiB", bf16_native=True)
TURING = Device("cuda", "Tesla T4", "sm_75, 15.0 GiB", bf16_native=False)


@pytest.mark.parametrize(("device", "expected"), [(EMULATING_CPU, "float32"), (NATIVE_BF16_CPU, "bfloat16"),
                                                  (AMPERE, "bfloat16"), (TURING, "float16")])
def test_auto_resolves_per_device(device, expected):
    precision = resolve_precision("auto", device)
    assert (precision.dtype, precision.requested, precision.note) == (expected, "auto", None)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_an_explicit_dtype_is_honoured(dtype):
    for device in (EMULATING_CPU, NATIVE_BF16_CPU, AMPERE, TURING):
        assert resolve_precision(dtype, device).dtype == dtype


def test_an_explicit_emulated_dtype_says_so_with_the_measured_factor():
    note = resolve_precision("bfloat16", EMULATING_CPU).note
    assert note and "emulated" in note and "58x slower than float32" in note and "AMD EPYC" in note
    assert resolve_precision("float16", NATIVE_BF16_CPU).note.startswith("compute_dtype float16 is emulated")
    assert resolve_precision("bfloat16", NATIVE_BF16_CPU).note is None
    assert resolve_precision("float32", EMULATING_CPU).note is None
    assert resolve_precision("float16", TURING).note is None  # GPUs are never said to emulate


def test_an_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="compute_dtype must be auto or one of bfloat16, float16, float32; given 'fp8'"):
        resolve_precision("fp8", EMULATING_CPU)


def test_the_probe_on_this_cpu_decides_from_its_measurement():
    device = probe_device()
    assert device.kind == "cpu" and device.name and "thread" in device.detail
    factor = device.slowdown["bfloat16"]
    assert factor > 0 and device.bf16_native == (factor < EMULATED_SLOWDOWN)
    assert resolve_precision("auto", device).dtype == ("bfloat16" if device.bf16_native else "float32")


def test_an_imitated_avx2_only_cpu_emulates_bf16_and_auto_picks_float32():
    """What a developer with native bf16 runs to see an AVX2-only machine; on an AVX2 CPU it is the real thing.
    The bench knows the imitation (an AVX-512 CPU dispatching AVX2) and judges budgets on a real AVX2 CPU's
    estimate there; without the two variables nothing is imitated."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    code = ("import json, torch; torch.set_num_threads(1); from trainer.hardware import cpu_flags, probe_device, "
            "resolve_precision; from bench.run import _avx2_imitation, _budget_seconds; d = probe_device(); "
            "print(json.dumps([d.slowdown, d.bf16_native, resolve_precision('auto', d).dtype, d.detail, "
            "bool(cpu_flags().get('avx512_f')), _avx2_imitation(), _budget_seconds(600.0, 'suite'), "
            "_budget_seconds(600.0, 'grid')]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    slowdown, native, dtype, detail, avx512, imitated, suite, grid = json.loads(out.stdout.strip().splitlines()[-1])
    assert native == (slowdown["bfloat16"] < EMULATED_SLOWDOWN) and dtype == ("bfloat16" if native else "float32")
    assert imitated == avx512 and "ISA AVX2" in detail
    assert suite == ([810.0, "est. real AVX2 = 10.0 min imitated x 1.35"] if avx512 else [600.0, "this machine"])
    assert grid == ([726.0, "est. real AVX2 = 10.0 min imitated x 1.21"] if avx512 else [600.0, "this machine"])
    from bench.run import IMITATION_ENV

    plain = {k: v for k, v in os.environ.items() if k not in IMITATION_ENV}
    out = subprocess.run([sys.executable, "-c", "from bench.run import _avx2_imitation as i; print(i())"], cwd=REPO,
                         env=plain, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-2000:]
    if native and "no bf16 flags" not in detail:
        pytest.skip(f"this CPU ({detail}) still ran bf16 at {slowdown['bfloat16']}x float32 under the imitation: "
                    "its bf16 matmul does not go through the capped dispatch")
    assert slowdown["bfloat16"] >= EMULATED_SLOWDOWN and not native and dtype == "float32"


@pytest.fixture
def auto_cfg(tiny_model_dir, local_data, tmp_path):
    spec = tiny_spec(tiny_model_dir, *local_data, tmp_path, quantization={"mode": "nf4", "compute_dtype": "auto"})
    return expand(parse_spec(spec))[0].config


def test_a_real_trial_records_its_device_dtype_versions_and_peak_memory(auto_cfg, tmp_path):
    assert auto_cfg.quantization.compute_dtype == "auto"
    events: list[Event] = []
    result = run_trial(auto_cfg, load_trial_data(auto_cfg.dataset), tmp_path / "t", events.append, num_threads=1)
    env = result.environment
    expected = resolve_precision("auto", probe_device()).dtype
    assert env["compute_dtype"] == expected and env["requested_dtype"] == "auto" and env["dtype_note"] is None
    assert env["device"].startswith("cpu: ") and env["device_kind"] == "cpu"
    assert env["versions"] == {p: metadata.version(p) for p in ("torch", "transformers", "peft", "trl", "bitsandbytes")}
    assert 50 < env["host_rss_mib"] < 24 * 1024
    assert env["attention"] == ("eager" if expected == "bfloat16" else "sdpa")  # max_seq_length 128, on a CPU
    first = [e for e in events if isinstance(e, (Environment, Phase))][:2]
    assert isinstance(first[0], Environment) and first[1] == Phase("load")  # reported up front
    # TRL would have cast the adapters of a 4-bit model to bfloat16; they stay float32 and still train.
    adapter = load_file(f"{result.adapter_dir}/adapter_model.safetensors")
    assert {v.dtype for v in adapter.values()} == {torch.float32}
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)


def test_the_sweep_trainer_loss_is_trls_summary_only_loss(auto_cfg, tmp_path):
    """Same labels, same number: the loss over summary positions only equals TRL's fused loss and the model's own."""
    from datasets import Dataset
    from transformers import Trainer
    from trl import SFTConfig, SFTTrainer

    from trainer.sft import SweepSFTTrainer
    from trainer.arguments import trainer_args
    from trainer.families import DECODER_ONLY
    from trainer.trial import adapt, load

    cfg = dataclasses.replace(auto_cfg, quantization=dataclasses.replace(auto_cfg.quantization, compute_dtype="float32"))
    tokenizer, model = load(cfg)
    model = adapt(model, cfg)
    rows, _ = DECODER_ONLY.training_rows(cfg, tokenizer, load_trial_data(cfg.dataset))
    args = SFTConfig(**trainer_args(cfg, tmp_path, cfg.training.max_steps), max_length=cfg.training.max_seq_length, completion_only_loss=True)
    ours = SweepSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    batch = next(iter(ours.get_train_dataloader()))
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()  # prompt masked, summary scored
    assert ours._slices_logits  # Llama takes a boolean logits_to_keep: the summary-only path is the one tested
    summary_tokens = int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        loss = ours.compute_loss(model, dict(batch))
        trl_loss = SFTTrainer.compute_loss(ours, model, dict(batch))
        model_loss = Trainer.compute_loss(ours, model, dict(batch))
        # Gradient accumulation: the Trainer passes the token count of all accumulated micro batches.
        halved = ours.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(2 * summary_tokens))
    assert torch.isfinite(loss) and abs(loss.item() - trl_loss.item()) < 1e-4
    assert abs(loss.item() - model_loss.item()) < 1e-4 and abs(halved.item() - loss.item() / 2) < 1e-4

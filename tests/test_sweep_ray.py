"""Sweeps end to end: through real local Ray (trials in worker processes, events to the driver, SQLite store,
TensorBoard files, leaderboard; a failing trial does not stop the others), then the shipped experiments, mixed
model families, full fine-tunes, exports and seed repeats, whose trials run in this process (tests/inline.py):
what they check is what a trial computes and what is made of it, not where it ran."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.planning.loading import parse_spec
from orchestrator.driver.sweep import run_sweep
from results.store import Store
from tests.conftest import tiny_spec


def test_sweep_end_to_end(backend, tiny_model_dir, local_data, tmp_path, capsys):
    raw = tiny_spec(tiny_model_dir, *local_data, tmp_path)
    # PEFT finds no module of that name to adapt: that trial must fail, alone.
    raw["search"]["grid"] = {"prompt": ["v2"], "lora.target_modules": ["all-linear", ["no_such_proj"]]}
    spec = parse_spec(raw)
    store = Store(spec.output.store_url())

    outcome = run_sweep(spec, store, backend, show_progress=False)

    assert outcome.failed == ["v2-target_modulesno_such_proj"]
    assert sorted(outcome.completed) == ["v2-target_modulesall-linear", "v2-zero-shot"]
    assert outcome.slots == 2
    trials = {t.name: t for t in store.summary("tiny").trials}
    assert len(trials) == 3
    assert "no_such_proj" in trials["v2-target_modulesno_such_proj"].error
    assert {t.baseline for t in trials.values() if t.kind == "trial"} == {"v2-zero-shot"}
    assert trials["v2-target_modulesall-linear"].baseline == "v2-zero-shot"
    assert set(trials["v2-target_modulesall-linear"].metrics) >= {"rougeL", "gen_tokens"}
    assert len(store.predictions("tiny", "v2-zero-shot")) == 4
    # Where each ran, as its worker reported it: at the start (so a failed trial has it) and, completed, with peak memory.
    import torch

    ran = trials["v2-target_modulesall-linear"].environment
    assert ran["compute_dtype"] == "float32" and ran["versions"]["torch"] == torch.__version__ and ran["host_rss_mib"] > 0
    assert trials["v2-target_modulesno_such_proj"].environment["device"] == ran["device"]

    sweep_dir = Path(spec.output.run_dir) / "tiny"
    assert (sweep_dir / "trials" / "v2-target_modulesall-linear" / "adapter" / "adapter_model.safetensors").exists()
    assert list((sweep_dir / "tensorboard" / "v2-target_modulesall-linear").glob("events.out.tfevents.*"))
    assert "Traceback" in (sweep_dir / "trials" / "v2-target_modulesno_such_proj" / "trial.log").read_text()

    again = run_sweep(spec, store, backend, show_progress=False)  # completed trials are reused
    assert sorted(again.reused) == sorted(outcome.completed) and len(store.summary("tiny").trials) == 3

    assert main(["leaderboard", "tiny", "--store", spec.output.store_url(), "--format", "csv"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4  # header + 3 rows


def test_tensorboard_has_curves_and_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from results.tensorboard import TensorBoardWriter

    sink = TensorBoardWriter(tmp_path)
    for step, loss in enumerate([2.0, 1.5, 1.2], 1):
        sink.scalar("v1-r8", "train/loss", step, loss)
    sink.hparams("v1-r8", {"prompt": "v1", "lora.rank": 8}, {"rougeL": 0.3})
    sink.close()
    events = EventAccumulator(str(tmp_path / "v1-r8"))
    events.Reload()
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([2.0, 1.5, 1.2])
    assert events.Scalars("hparams/rougeL")[0].value == pytest.approx(0.3)
    assert set(events.PluginTagToContent("hparams")) == {"_hparams_/experiment", "_hparams_/session_start_info",
                                                         "_hparams_/session_end_info"}


def run_card_snippet(folder, card: str, monkeypatch, capsys) -> None:
    """The model card's code, run as it is from the export folder: it loads the model and prints a summary."""
    snippet = card.split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(folder)
    capsys.readouterr()
    exec(compile(snippet, str(folder / "README.md"), "exec"), {"__name__": "__card__"})  # raises if it breaks
    assert capsys.readouterr().out.endswith("\n")  # it got to its print (a tiny model's summary may be empty)


def test_decoder_only_and_encoder_decoder_in_one_sweep_then_export(inline_backend, tiny_model_dir, tiny_t5_dir,
                                                                   local_data, tmp_path, capsys, monkeypatch):
    import json

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    raw = tiny_spec(tiny_model_dir, *local_data, tmp_path)
    raw["prompt"] = "v1"
    raw["search"]["grid"] = {"model.name": [str(tiny_model_dir), str(tiny_t5_dir)]}
    spec = parse_spec(raw)
    store = Store(spec.output.store_url())
    outcome = run_sweep(spec, store, inline_backend, show_progress=False)

    names = {"tiny-llama0", "tiny-t50"}
    assert not outcome.failed and set(outcome.completed) == names | {f"v1-{n}-zero-shot" for n in names}
    trials = {t.name: t for t in store.summary("tiny").trials}
    assert trials["tiny-t50"].params["model.name"] == str(tiny_t5_dir) and trials["tiny-t50"].metrics["gen_tokens"] > 0
    # Each fine-tune is compared with the zero-shot run of its own model, not whichever baseline came last.
    assert {n: trials[n].baseline for n in names} == {n: f"v1-{n}-zero-shot" for n in names}
    from results import leaderboard

    rows = {r.trial: r for r in leaderboard.build(store.summary("tiny"), "rougeL")}
    for n in names:
        own = trials[f"v1-{n}-zero-shot"].metrics["rougeL"]
        assert rows[n].delta == pytest.approx(100 * (trials[n].metrics["rougeL"] - own))
    t5_adapter = load_file(f"{trials['tiny-t50'].adapter_dir}/adapter_model.safetensors")
    assert any("decoder" in k for k in t5_adapter)

    out = tmp_path / "export"
    out.mkdir()
    (out / "stale.txt").write_text("from an older export")
    assert main(["export", "tiny", "tiny-llama0", "--merged", "--out", str(out), "--store", store.url]) == 0
    assert not (out / "stale.txt").exists()  # the folder was replaced, not mixed
    card = (out / "README.md").read_text()
    assert "base_model: " + str(tiny_model_dir) in card and "| rougeL |" in card and "lora:" in card
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[q], base.state_dict()[q])  # the adapter is in the weights
    # Merged = the NF4 weights the adapter was trained against (dequantized) + scale x B @ A; not the original + it.
    from trainer.config import QuantizationConfig
    from trainer.models import load_model

    lora = load_file(out / "adapter" / "adapter_model.safetensors")
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    delta = 2.0 * lora[f"{prefix}.lora_B.weight"] @ lora[f"{prefix}.lora_A.weight"]  # alpha 8 / rank 4
    seen = load_model(str(tiny_model_dir), QuantizationConfig(mode="nf4", compute_dtype="float32")).dequantize()
    assert torch.allclose(merged.state_dict()[q], seen.state_dict()[q] + delta, atol=1e-6)
    assert not torch.allclose(merged.state_dict()[q], base.state_dict()[q] + delta, atol=1e-3)
    # Plain transformers on the merged model, one prompt at a time, gives every stored prediction (CPU, float32).
    examples = [json.loads(line) for line in (out / "eval_examples.jsonl").read_text().splitlines()]
    stored = {p["example_id"]: p["prediction"] for p in store.predictions("tiny", "tiny-llama0")}
    assert len(examples) == len(stored) == 4
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    for e in examples:
        inputs = tokenizer(e["prompt"], return_tensors="pt", add_special_tokens=e["add_special_tokens"])
        output = merged.generate(**inputs, max_new_tokens=e["max_new_tokens"], do_sample=False,
                                 num_beams=e["num_beams"], pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert text == e["prediction"] == stored[e["example_id"]]
    verified = json.loads((out / "verification.json").read_text())
    assert (verified["identical"], verified["total"], verified["differ"]) == (4, 4, [])
    assert verified["loaded_as"].startswith("AutoModelForCausalLM.from_pretrained('merged', dtype='float32')")
    assert verified["regenerated"] == pytest.approx(100 * trials["tiny-llama0"].metrics["rougeL"])
    assert "Reproduction: 4 of 4 stored predictions reproduced exactly" in card
    assert "AutoModelForCausalLM.from_pretrained('merged', dtype='float32')" in card
    run_card_snippet(out, card, monkeypatch, capsys)
    # The encoder-decoder's adapter: its card loads the 4-bit base with the seq2seq class, then the adapter.
    t5_out = tmp_path / "export-t5"
    assert main(["export", "tiny", "tiny-t50", "--out", str(t5_out), "--store", store.url]) == 0
    t5_card = (t5_out / "README.md").read_text()
    assert "AutoModelForSeq2SeqLM" in t5_card and "bnb_4bit_quant_type='nf4'" in t5_card
    run_card_snippet(t5_out, t5_card, monkeypatch, capsys)
    assert main(["export", "tiny", "v1-tiny-llama0-zero-shot", "--store", store.url]) == 2  # no adapter
    assert "only a completed fine-tune" in capsys.readouterr().err


def test_full_fine_tune_against_lora_in_one_sweep(inline_backend, tiny_model_dir, local_data, tmp_path):
    import torch
    from safetensors.torch import load_file

    raw = tiny_spec(tiny_model_dir, *local_data, tmp_path)
    raw["prompt"] = "v1"
    raw["quantization"] = {"mode": "none", "compute_dtype": "float32"}
    raw["search"]["grid"] = {"training.method": ["lora", "full"]}
    raw["search"]["baselines"] = False
    outcome = run_sweep(parse_spec(raw), Store(raw["output"]["store"]), inline_backend, show_progress=False)
    assert not outcome.failed and len(outcome.completed) == 2
    trials = {t.name: t for t in Store(raw["output"]["store"]).summary("tiny").trials}
    lora, full = trials["methodlora"], trials["methodfull"]
    assert full.metrics["trainable_params"] == full.metrics["total_params"] > 10 * lora.metrics["trainable_params"]
    assert full.metrics["saved_mib"] > 10 * lora.metrics["saved_mib"]  # the whole model against an adapter
    base = load_file(f"{tiny_model_dir}/model.safetensors")
    tuned = load_file(f"{full.adapter_dir}/model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(tuned[q], base[q])  # full: the base weights themselves changed
    adapter = load_file(f"{lora.adapter_dir}/adapter_model.safetensors")
    assert all("lora_" in k for k in adapter)  # LoRA: only adapters were trained and saved; the base is as it was
    out = tmp_path / "export-full"
    assert main(["export", "tiny", "methodfull", "--out", str(out), "--store", raw["output"]["store"]]) == 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exported = AutoModelForCausalLM.from_pretrained(out / "model")  # the whole tuned model, with its tokenizer
    assert torch.equal(exported.state_dict()[q], tuned[q]) and AutoTokenizer.from_pretrained(out / "model")
    problems = parse_spec_problems({**raw, "quantization": {"mode": "nf4"}})
    assert "training.method (at methodfull): a full fine-tune trains every weight" in problems


def parse_spec_problems(raw: dict) -> str:
    from sweeps.spec import SpecError

    try:
        parse_spec(raw)
    except SpecError as exc:
        return str(exc)
    return ""


SPEC_BUDGET = ["dataset.train_examples=8", "dataset.eval_examples=2", "training.max_steps=2",
               "training.micro_batch_size=2", "training.gradient_accumulation_steps=1", "training.warmup_steps=0",
               "training.max_seq_length=192", "training.checkpoint_interval_steps=1", "generation.max_new_tokens=8"]


def run_shipped(name: str, tmp_path, model_dir, inline_backend, monkeypatch, *overrides: str) -> dict:
    """A shipped experiment spec, run through `sweep run` with --set: a tiny local model, a tiny budget; its trials
    run in this process."""
    monkeypatch.setattr("orchestrator.backends.ray_backend.RayBackend", lambda **_: inline_backend)
    sets = [f"model.name={model_dir}", f"output.run_dir={tmp_path / 'runs'}",
            f"output.store=sqlite:///{tmp_path / 's.db'}", *SPEC_BUDGET, *overrides]
    args = ["run", str(Path(__file__).resolve().parents[1] / "sweeps" / f"{name}.yaml"), "--quiet"]
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    summary = Store(f"sqlite:///{tmp_path / 's.db'}").summary(name)
    assert summary.spec["model"]["name"] == str(model_dir)  # the override, stored with the sweep
    return {t.name: t for t in summary.trials}


def test_flan_t5_full_vs_lora_spec_runs_with_a_tiny_t5(inline_backend, tiny_t5_dir, data_root, tmp_path, monkeypatch):
    trials = run_shipped("flan_t5_dialogsum_full_vs_lora", tmp_path, tiny_t5_dir, inline_backend, monkeypatch,
                         "search.grid.training.learning_rate=[1e-3]", "training.eval_interval_steps=1",
                         "lora.target_modules=[q, v]")
    assert sorted(trials) == ["methodfull-lr1e-3", "methodlora-lr1e-3", "summarize-zero-shot"]
    assert all(t.status == "completed" for t in trials.values())
    full, lora = trials["methodfull-lr1e-3"].metrics, trials["methodlora-lr1e-3"].metrics
    assert full["trainable_params"] == full["total_params"] > lora["trainable_params"] > 0


def test_llama_bertscore_spec_runs_with_a_tiny_llama_and_encoder(inline_backend, tiny_model_dir, tiny_bert_dir,
                                                                 data_root, tmp_path, monkeypatch):
    trials = run_shipped("llama32_3b_dialogsum_bertscore", tmp_path, tiny_model_dir, inline_backend, monkeypatch,
                         f"scoring.bertscore_model={tiny_bert_dir}", "search.grid.lora.rank=[4]",
                         "quantization.compute_dtype=float32", "training.optimizer=adamw_8bit")
    assert sorted(trials) == ["r4", "summarize-zero-shot"] and all(t.status == "completed" for t in trials.values())
    assert trials["r4"].params["lora.rank"] == 4  # the --set grid replaced the file's [8, 16]...
    stored = Store(f"sqlite:///{tmp_path / 's.db'}").summary("llama32_3b_dialogsum_bertscore").spec
    assert stored["search"]["grid"] == {"lora.rank": [4]}  # ...and is stored with the sweep
    for t in trials.values():
        assert {"bertscore", "bertscore_precision", "bertscore_recall", "eval_loss"} <= set(t.metrics)


def test_a_bfloat16_export_states_how_many_predictions_it_reproduces(inline_backend, tiny_model_dir, local_data,
                                                                     tmp_path):
    """In bfloat16 the merged sum is rounded where the trial added two rounded outputs, so a merged model may
    decode another token: `verification.json` must count exactly what plain transformers reproduces."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    raw = tiny_spec(tiny_model_dir, *local_data, tmp_path)
    raw["quantization"]["compute_dtype"] = "bfloat16"
    raw["search"] = {"grid": {"prompt": ["v1"]}, "baselines": False}
    spec = parse_spec(raw)
    store = Store(spec.output.store_url())
    assert run_sweep(spec, store, inline_backend, show_progress=False).completed == ["v1"]
    out = tmp_path / "export"
    assert main(["export", "tiny", "v1", "--merged", "--out", str(out), "--store", store.url]) == 0
    card = (out / "README.md").read_text()
    assert "AutoModelForCausalLM.from_pretrained('merged', dtype='bfloat16')" in card
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype="bfloat16")
    assert merged.dtype == torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    same = 0
    for e in (json.loads(line) for line in (out / "eval_examples.jsonl").read_text().splitlines()):
        inputs = tokenizer(e["prompt"], return_tensors="pt", add_special_tokens=e["add_special_tokens"])
        output = merged.generate(**inputs, max_new_tokens=e["max_new_tokens"], do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        same += tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip() == \
            e["prediction"]
    verified = json.loads((out / "verification.json").read_text())
    assert (verified["identical"], verified["total"]) == (same, 4)
    assert f"Reproduction: {same} of 4 stored predictions reproduced exactly" in card


def test_a_seed_repeat_grid_shows_grouped_mean_and_sd(inline_backend, tiny_model_dir, local_data, tmp_path, capsys):
    import json
    import statistics

    raw = tiny_spec(tiny_model_dir, *local_data, tmp_path)
    raw["search"]["grid"] = {"prompt": ["v1"], "training.seed": [1, 2]}
    spec = parse_spec(raw)
    store = Store(spec.output.store_url())
    outcome = run_sweep(spec, store, inline_backend, show_progress=False)
    assert sorted(outcome.completed) == ["v1-seed1", "v1-seed2", "v1-zero-shot"]
    trials = {t.name: t for t in store.summary("tiny").trials}
    assert [c[2] for c in store.curves(trials["v1-seed1"].id) if c[0] == "train/loss"] != \
        [c[2] for c in store.curves(trials["v1-seed2"].id) if c[0] == "train/loss"]  # the seed changed training
    capsys.readouterr()  # what the trials printed (they ran in this process)
    assert main(["leaderboard", "tiny", "--store", spec.output.store_url(), "--format", "json"]) == 0
    groups = {g["config"]: g for g in json.loads(capsys.readouterr().out)["repeats"]}
    assert set(groups) == {"v1", "v1-zero-shot"} and groups["v1"]["n"] == 2
    losses = [trials[f"v1-seed{s}"].metrics["eval_loss"] for s in (1, 2)]
    assert groups["v1"]["mean"]["eval_loss"] == pytest.approx(statistics.fmean(losses))
    assert groups["v1"]["std"]["eval_loss"] == pytest.approx(statistics.stdev(losses))

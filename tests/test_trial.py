"""One real trial on a tiny model: 4-bit NF4 base (bitsandbytes), LoRA via PEFT, SFTTrainer, ROUGE."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from orchestrator.search.strategies import expand
from orchestrator.planning.loading import parse_spec
from tests.conftest import tiny_spec
from trainer.data import load_trial_data
from trainer.events import Event, Metric, Phase, Scores
from trainer.models import load_model, load_tokenizer
from trainer.families import DECODER_ONLY
from trainer.trial import run_trial
from transformers import AutoModelForCausalLM


@pytest.fixture
def trial_cfg(tiny_model_dir, local_data, tmp_path):
    return expand(parse_spec(tiny_spec(tiny_model_dir, *local_data, tmp_path)))[0].config


def test_nf4_base_is_real_4bit(tiny_model_dir, trial_cfg):
    import bitsandbytes as bnb

    model = load_model(str(tiny_model_dir), trial_cfg.quantization)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear4bit)
    assert q_proj.weight.dtype == torch.uint8 and q_proj.weight.quant_state.quant_type == "nf4"


def test_trial_trains_lora_weights_and_reports(trial_cfg, tmp_path):
    cfg = dataclasses.replace(trial_cfg, training=dataclasses.replace(trial_cfg.training, eval_interval_steps=1))
    data = load_trial_data(cfg.dataset)
    events: list[Event] = []
    result = run_trial(cfg, data, tmp_path / "trial", events.append, num_threads=1)

    adapter = load_file(f"{result.adapter_dir}/adapter_model.safetensors")
    lora_b = {k: v for k, v in adapter.items() if "lora_B" in k}
    assert lora_b, "the adapter must contain LoRA B matrices"
    # PEFT initialises every B at exactly zero; training must have moved each of them.
    assert all(v.abs().sum() > 0 for v in lora_b.values())

    steps = [e.name for e in events if isinstance(e, Phase)]
    assert steps == ["load", "adapt", "train", "evaluate", "save"]
    metrics = [(e.name, e.step) for e in events if isinstance(e, Metric)]
    assert ("train/loss", 1) in metrics and ("train/loss", 2) in metrics
    assert ("eval/rougeL", 1) in metrics and ("eval/rougeL", 2) in metrics  # interim and final
    interim = {(e.name, e.step): e.values for e in events if isinstance(e, Scores)}
    per_example = ("rouge1", "rouge2", "rougeL", "rougeLsum", "rouge_sum", "eval_loss")  # each prediction's own
    assert set(interim) == {(f"eval/{m}", 1) for m in per_example}  # the interim eval only, not the final one
    interim_mean = next(e.value for e in events if isinstance(e, Metric) and (e.name, e.step) == ("eval/rougeL", 1))
    assert len(interim[("eval/rougeL", 1)]) == 4  # one per eval example, for the Wilcoxon pruner
    assert sum(interim[("eval/rougeL", 1)]) / 4 == pytest.approx(interim_mean)
    assert set(result.metrics) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "rouge_sum", "eval_loss", "gen_tokens",
                                   "gen_words", "trainable_params", "total_params", "saved_mib"}
    assert 0 < result.metrics["trainable_params"] < result.metrics["total_params"] and result.metrics["saved_mib"] > 0
    assert len(result.predictions) == 4 and all(0 <= p["rougeL"] <= 1 for p in result.predictions)
    assert 0 < result.metrics["gen_tokens"] <= cfg.generation.max_new_tokens


def test_zero_shot_has_no_adapter(trial_cfg, tmp_path):
    cfg = dataclasses.replace(trial_cfg, zero_shot=True)
    result = run_trial(cfg, load_trial_data(cfg.dataset), tmp_path / "zs", lambda e: None, num_threads=1)
    assert result.adapter_dir is None and set(result.timings_s) == {"load", "evaluate"}
    assert result.metrics["trainable_params"] == 0 and result.metrics["total_params"] > 0


def test_dialogue_is_truncated_never_the_summary(tiny_model_dir, trial_cfg):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    data = load_trial_data(trial_cfg.dataset)
    long = dataclasses.replace(data, train=tuple(dataclasses.replace(e, dialogue=e.dialogue * 40) for e in data.train))
    rows, skipped = DECODER_ONLY.training_rows(trial_cfg, tokenizer, long)
    assert skipped == 0 and len(rows) == len(long.train)
    for row, example in zip(rows, long.train):
        assert row["completion"][0]["content"] == example.summary
        text = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= trial_cfg.training.max_seq_length
        assert len(row["prompt"][-1]["content"]) < len(example.dialogue)


def test_too_short_max_seq_length_is_a_clear_error(tiny_model_dir, trial_cfg):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    cfg = dataclasses.replace(trial_cfg, training=dataclasses.replace(trial_cfg.training, max_seq_length=32))
    with pytest.raises(ValueError, match="no training row fits training.max_seq_length=32"):
        DECODER_ONLY.training_rows(cfg, tokenizer, load_trial_data(cfg.dataset))


def test_full_precision_base_also_trains(trial_cfg, tmp_path):
    import bitsandbytes as bnb

    cfg = dataclasses.replace(trial_cfg, quantization=dataclasses.replace(trial_cfg.quantization, mode="none"))
    model = load_model(cfg.model.name, cfg.quantization)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    result = run_trial(cfg, load_trial_data(cfg.dataset), tmp_path / "fp", lambda e: None, num_threads=1)
    adapter = load_file(f"{result.adapter_dir}/adapter_model.safetensors")
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)


def test_encoder_decoder_trial_trains_lora_with_seq2seq_trainer(trial_cfg, tiny_t5_dir, tmp_path):
    import bitsandbytes as bnb

    cfg = dataclasses.replace(trial_cfg, model=dataclasses.replace(trial_cfg.model, name=str(tiny_t5_dir)))
    model = load_model(str(tiny_t5_dir), cfg.quantization)
    assert model.config.is_encoder_decoder and isinstance(model.encoder.block[0].layer[0].SelfAttention.q,
                                                          bnb.nn.Linear4bit)
    assert load_tokenizer(str(tiny_t5_dir)).chat_template is None  # plain prompt into the encoder
    events: list[Event] = []
    result = run_trial(cfg, load_trial_data(cfg.dataset), tmp_path / "t5", events.append, num_threads=1)
    adapter = load_file(f"{result.adapter_dir}/adapter_model.safetensors")
    lora_b = {k: v for k, v in adapter.items() if "lora_B" in k}
    assert any("encoder" in k for k in lora_b) and any("decoder" in k for k in lora_b)
    assert all(v.abs().sum() > 0 for v in lora_b.values())  # every adapter moved
    assert ("train/loss", 2) in [(e.name, e.step) for e in events if isinstance(e, Metric)]
    assert len(result.predictions) == 4 and 0 < result.metrics["gen_tokens"] <= cfg.generation.max_new_tokens


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_interim_eval_leaves_t5_training_labels_as_they_were(tiny_t5_dir, local_data, tmp_path, dtype):
    """Generation pads prompts on the left; T5's collator pads labels on the tokenizer's side. An interim eval
    must hand the tokenizer back as it found it, so training with interim evals sees the same batches; nor may
    it change the 4-bit weights training reads (trainer/fourbit.py), in either dtype."""
    raw = tiny_spec(tiny_t5_dir, *local_data, tmp_path)
    raw["quantization"]["compute_dtype"] = dtype
    raw["training"].update(max_steps=4, micro_batch_size=4)  # 4 summaries of different lengths per batch
    cfg = expand(parse_spec(raw))[0].config
    data = load_trial_data(cfg.dataset)

    def losses(eval_interval_steps: int) -> list[float]:
        events: list[Event] = []
        run = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, eval_interval_steps=eval_interval_steps))
        run_trial(run, data, tmp_path / f"every{eval_interval_steps}", events.append, num_threads=1)
        return [e.value for e in events if isinstance(e, Metric) and e.name == "train/loss"]

    assert losses(1) == losses(0)


def test_generation_out_of_memory_halves_the_eval_batch_and_keeps_every_prompt(tiny_model_dir, capsys):
    from transformers import AutoModelForCausalLM

    from evaluation.generate import generate

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    prompts = [f"Summarize dialogue number {i}:" for i in range(5)]
    expected = generate(model, tokenizer, prompts, 4, batch_size=2)  # the batches it must end up with
    real, sizes = model.generate, []

    def runs_out_above_2(**kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if sizes[-1] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")
        return real(**kwargs)

    model.generate = runs_out_above_2
    tokenizer.padding_side = "right"
    got = generate(model, tokenizer, prompts, 4, batch_size=8)
    assert sizes == [5, 4, 2, 2, 1] and got == expected
    assert "eval batch size halved to 2" in capsys.readouterr().out
    assert tokenizer.padding_side == "right"  # as it was found


def test_heldout_loss_out_of_memory_halves_its_batch_and_gives_the_same_losses(tiny_model_dir, trial_cfg, capsys):
    import functools

    from transformers import AutoModelForCausalLM

    from trainer import heldout

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = load_tokenizer(str(tiny_model_dir))
    data = load_trial_data(trial_cfg.dataset)
    pairs = heldout.heldout_pairs(trial_cfg, tokenizer, DECODER_ONLY, [e.dialogue for e in data.eval],
                                  [e.references for e in data.eval])
    expected = heldout.heldout_loss(model, pairs, len(data.eval), 2, tokenizer.pad_token_id)
    real, sizes = model.forward, []

    @functools.wraps(real)
    def runs_out_above_2(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if sizes[-1] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")
        return real(*args, **kwargs)

    model.forward = runs_out_above_2
    assert heldout.heldout_loss(model, pairs, len(data.eval), 8, tokenizer.pad_token_id) == expected
    assert sizes[:3] == [4, 2, 2] and "held-out loss ran out of memory; its batch size halved to 2" in \
        capsys.readouterr().out


def test_a_trial_whose_gradients_blow_up_ends_as_diverged(trial_cfg, tmp_path):
    from trainer.trial import TrialDiverged

    cfg = dataclasses.replace(trial_cfg, lora=dataclasses.replace(trial_cfg.lora, alpha=10**30))  # scale 2.5e29
    events: list[Event] = []
    with pytest.raises(TrialDiverged, match=r"^diverged at step 1 \((loss|grad_norm) (nan|inf)\)$"):
        run_trial(cfg, load_trial_data(cfg.dataset), tmp_path / "t", events.append, num_threads=1)
    losses = [e.step for e in events if isinstance(e, Metric) and e.name == "train/loss"]
    assert losses == [1]  # it stopped at the first non-finite value, not after max_steps


def test_beams_and_no_repeat_change_the_output_and_are_recorded(trial_cfg, tmp_path):
    data = load_trial_data(trial_cfg.dataset)

    def zero_shot(**generation):
        cfg = dataclasses.replace(trial_cfg, zero_shot=True,
                                  generation=dataclasses.replace(trial_cfg.generation, **generation))
        return run_trial(cfg, data, tmp_path / str(len(generation)), lambda event: None, num_threads=1)

    greedy, searched = zero_shot(), zero_shot(num_beams=3, no_repeat_ngram_size=2)
    assert greedy.scoring["decoding"] == "greedy, max 8 new tokens"
    assert searched.scoring["decoding"] == "beam search (3 beams), no_repeat_ngram_size 2, max 8 new tokens"
    assert [p["prediction"] for p in greedy.predictions] != [p["prediction"] for p in searched.predictions]


def test_rslora_scales_by_the_root_of_the_rank_and_dora_saves_magnitudes_and_trains(trial_cfg, tmp_path):
    from trainer.trial import adapt

    cfg = dataclasses.replace(trial_cfg, lora=dataclasses.replace(trial_cfg.lora, use_rslora=True, alpha=8))
    model = adapt(load_model(str(cfg.model.name), cfg.quantization), cfg)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.scaling["default"] == pytest.approx(8 / cfg.lora.rank ** 0.5)  # not 8 / rank

    cfg = dataclasses.replace(trial_cfg, lora=dataclasses.replace(trial_cfg.lora, use_dora=True))
    result = run_trial(cfg, load_trial_data(cfg.dataset), tmp_path / "dora", lambda event: None, num_threads=1)
    adapter = load_file(f"{result.adapter_dir}/adapter_model.safetensors")
    magnitudes = {k: v for k, v in adapter.items() if "lora_magnitude_vector" in k}
    assert magnitudes and all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)


def test_weight_decay_and_gradient_clipping_reach_the_optimizer(trial_cfg, tmp_path):
    from trainer.arguments import trainer_args

    cfg = dataclasses.replace(trial_cfg, training=dataclasses.replace(trial_cfg.training, max_grad_norm=0.5,
                                                                      weight_decay=0.1))
    args = trainer_args(cfg, tmp_path, cfg.training.max_steps)
    assert (args["max_grad_norm"], args["weight_decay"]) == (0.5, 0.1)
    # Decay pulls every trained weight towards 0: after the same 2 steps the adapter is smaller than without it.
    data = load_trial_data(cfg.dataset)
    decayed = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, weight_decay=50.0))

    def a_norm(c, folder: str) -> float:
        adapter = load_file(f"{run_trial(c, data, tmp_path / folder, lambda e: None, 1).adapter_dir}"
                            "/adapter_model.safetensors")
        return sum(float(v.norm()) for k, v in adapter.items() if "lora_A" in k)

    assert a_norm(decayed, "decayed") < a_norm(cfg, "plain")


def test_heldout_loss_is_the_reference_summaries_cross_entropy(trial_cfg, tmp_path):
    from trainer.heldout import heldout_loss, heldout_pairs

    data = load_trial_data(trial_cfg.dataset)
    result = run_trial(trial_cfg, data, tmp_path / "t", lambda e: None, num_threads=1)
    per_example = [p["eval_loss"] for p in result.predictions]
    assert result.metrics["eval_loss"] == pytest.approx(sum(per_example) / len(per_example))
    # By hand for the first example: the model's own loss (labels -100 on the prompt) of its reference.
    from peft import PeftModel

    tokenizer = load_tokenizer(str(trial_cfg.model.name))
    model = PeftModel.from_pretrained(load_model(str(trial_cfg.model.name), trial_cfg.quantization), result.adapter_dir)
    [pair] = heldout_pairs(trial_cfg, tokenizer, DECODER_ONLY, [data.eval[0].dialogue], [data.eval[0].references])
    with torch.inference_mode():
        own = model.eval()(input_ids=torch.tensor([pair.input_ids]), labels=torch.tensor([pair.labels])).loss
    assert per_example[0] == pytest.approx(float(own), rel=1e-4)
    assert heldout_loss(model, [pair], 1, 1, tokenizer.pad_token_id) == [pytest.approx(float(own), rel=1e-4)]
    assert result.scoring["eval_loss"].startswith("teacher-forced cross-entropy")


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_references_continue_their_shared_prompt_and_score_as_their_whole_sequences(tiny_model_dir, trial_cfg,
                                                                                   tmp_path, dtype, tolerance):
    """Three references of different lengths cut the dialogue at three places; each continues from the prompt
    tokens they share (one KV cache) and scores as the model's own loss of its whole sequence. Tolerance: the
    order of the arithmetic differs (measured: 5e-7 relative in float32, 5.3e-3 in bfloat16 on SmolLM2)."""
    from trainer import heldout

    from transformers import AutoModelForCausalLM

    cfg = dataclasses.replace(trial_cfg, training=dataclasses.replace(trial_cfg.training, max_seq_length=96),
                              quantization=dataclasses.replace(trial_cfg.quantization, compute_dtype=dtype))
    sharp = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():  # random weights x 8: peaked predictions, so a token at a wrong position shows in the loss
        for param in sharp.parameters():
            param.mul_(8.0)
    sharp.save_pretrained(tmp_path / "sharp")
    model, tokenizer = load_model(str(tmp_path / "sharp"), cfg.quantization).eval(), load_tokenizer(str(tiny_model_dir))
    dialogue = " ".join(f"#Person{i % 2 + 1}#: line {i} of a long talk about the weekend plans." for i in range(12))
    references = [("They plan the weekend.", "The two people talk at length about what to do this weekend, "
                   "one line after another, and agree on nothing yet.", "Weekend plans are discussed.")] * 2
    pairs = heldout.heldout_pairs(cfg, tokenizer, DECODER_ONLY, [dialogue, dialogue[:120]], references)
    first = [p for p in pairs if p.example == 0]
    assert len({tuple(p.input_ids[:len(p.input_ids) - sum(l != -100 for l in p.labels)]) for p in first}) == 3
    assert 0 < heldout.shared_prefix(first) < min(len(p.input_ids) for p in first) - 20
    with torch.inference_mode():
        own = [float(model(input_ids=torch.tensor([p.input_ids]), labels=torch.tensor([p.labels])).loss)
               for p in pairs]
    expected = [sum(own[:3]) / 3, sum(own[3:]) / 3]
    assert heldout.heldout_loss(model, pairs, 2, 2, tokenizer.pad_token_id) == pytest.approx(expected, rel=tolerance)
    assert heldout.heldout_loss(model, pairs, 2, 1, tokenizer.pad_token_id) == pytest.approx(expected, rel=tolerance)


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_the_heldout_loss_continues_from_the_prompts_generation_read(tiny_model_dir, trial_cfg, tmp_path, dtype,
                                                                      tolerance):
    """An evaluation reads each prompt once: the references of an example continue from the prompt its generate
    call just read (that call's KV cache), as far as they share it. A dialogue that generation cut shorter than
    the loss does continues from the part they share, or, where re-reading the rest for each of 3 references
    would cost more than its own prompt, is run apart. Predictions are those of a plain generate call; each
    loss is the model's own loss of the pair's whole sequence. Tolerance as for the shared prompt (the order of
    the arithmetic differs; measured on the tiny model: 1.5e-7 in float32, 4.4e-3 in bfloat16)."""
    from evaluation.generate import generate
    from trainer import heldout, prompts

    cfg = dataclasses.replace(trial_cfg, training=dataclasses.replace(trial_cfg.training, max_seq_length=96),
                              quantization=dataclasses.replace(trial_cfg.quantization, compute_dtype=dtype))
    sharp = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():  # peaked predictions: a token at a wrong position or a wrong cache row shows in the loss
        for param in sharp.parameters():
            param.mul_(8.0)
    sharp.save_pretrained(tmp_path / "sharp")
    model, tokenizer = load_model(str(tmp_path / "sharp"), cfg.quantization).eval(), load_tokenizer(str(tiny_model_dir))
    long = " ".join(f"#Person{i % 2 + 1}#: line {i} of a long talk about the weekend plans." for i in range(12))
    dialogues = ["#Person1#: Tea?\n#Person2#: Yes, please.", long, "#Person1#: Late again.\n#Person2#: Sorry.", long]
    references = [("They have tea.", "Tea is offered and accepted."), ("They plan the weekend.",),
                  ("Person2 is late.", "Someone apologises.", "#Person2# is late again."),
                  ("They plan.", "Plans are made.", "The weekend is planned.")]
    pairs = heldout.heldout_pairs(cfg, tokenizer, DECODER_ONLY, dialogues, references)
    texts = [prompts.prompt_text(cfg, tokenizer, prompts.fit_dialogue(cfg, tokenizer, d, 56)) for d in dialogues]
    with torch.inference_mode():
        own = [float(model(input_ids=torch.tensor([p.input_ids]), labels=torch.tensor([p.labels])).loss)
               for p in pairs]
    expected = [sum(own[k] for k, p in enumerate(pairs) if p.example == i) /
                sum(p.example == i for p in pairs) for i in range(4)]

    plain = generate(model, tokenizer, texts, 8, 2, add_special_tokens=False)
    loss = heldout.HeldoutLoss(model, pairs, 4, 2, tokenizer.pad_token_id)
    read = generate(model, tokenizer, texts, 8, 2, add_special_tokens=False, on_prefill=loss.from_prefill)
    assert sorted(loss.pending) == [3]  # 3 references x the tokens generation's cut left out > its own prompt
    assert read == plain
    assert loss.losses() == pytest.approx(expected, rel=tolerance)


def test_an_epoch_budget_counts_steps_as_the_trainer_does_with_warmup_ratio_8bit_adamw_and_an_fp4_base(
        trial_cfg, tmp_path, monkeypatch):
    from bitsandbytes.optim.optimizer import Optimizer8bit

    calls = []
    step = Optimizer8bit.step
    monkeypatch.setattr(Optimizer8bit, "step", lambda self, *a, **k: calls.append(1) or step(self, *a, **k))
    # 8 rows, micro batch 2, no accumulation: 4 steps an epoch, so 1.5 epochs = 6 steps; warm-up ceil(6 x 0.25) = 2.
    training = dataclasses.replace(trial_cfg.training, max_steps=None, epochs=1.5, warmup_ratio=0.25,
                                   optimizer="adamw_8bit")
    cfg = dataclasses.replace(trial_cfg, training=training,
                              quantization=dataclasses.replace(trial_cfg.quantization, mode="fp4"))
    events: list[Event] = []
    result = run_trial(cfg, load_trial_data(cfg.dataset), tmp_path / "epochs", events.append, num_threads=1)

    losses = [e.step for e in events if isinstance(e, Metric) and e.name == "train/loss"]
    rates = [e.value for e in events if isinstance(e, Metric) and e.name == "train/learning_rate"]
    assert losses == [1, 2, 3, 4, 5, 6] and len(calls) == 6  # bitsandbytes' optimizer made every update
    assert rates[0] < rates[1] and rates[1] > rates[-1] > 0  # 2 warm-up steps, then the linear decay
    assert ("eval/rougeL", 6) in [(e.name, e.step) for e in events if isinstance(e, Metric)]  # the final eval, at the last step
    adapter = load_file(f"{result.adapter_dir}/adapter_model.safetensors")
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # trained on the fp4 base


def test_fp4_int8_and_a_checkpoint_saved_in_4bit_load_as_asked(tiny_model_dir, trial_cfg, tmp_path):
    import bitsandbytes as bnb

    from trainer.models import quantization_problems

    quant = trial_cfg.quantization
    fp4 = load_model(str(tiny_model_dir), dataclasses.replace(quant, mode="fp4")).model.layers[0].self_attn.q_proj
    assert isinstance(fp4, bnb.nn.Linear4bit) and fp4.weight.quant_state.quant_type == "fp4"
    int8 = load_model(str(tiny_model_dir), dataclasses.replace(quant, mode="int8")).model.layers[0].self_attn.q_proj
    assert isinstance(int8, bnb.nn.Linear8bitLt) and int8.weight.dtype == torch.int8

    nf4 = load_model(str(tiny_model_dir), quant)
    saved = tmp_path / "tiny-bnb-4bit"
    nf4.save_pretrained(saved)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(saved)
    again = load_model(str(saved), quant)  # no second quantization: the saved 4-bit weights as they are
    ids = torch.tensor([[1, 2, 3, 4]])
    assert isinstance(again.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert torch.equal(again(input_ids=ids).logits, nf4(input_ids=ids).logits)

    as_none = dataclasses.replace(trial_cfg, model=dataclasses.replace(trial_cfg.model, name=str(saved)),
                                  quantization=dataclasses.replace(quant, mode="none"))
    [problem] = quantization_problems(as_none)
    assert problem.path == "quantization.mode" and problem.allowed == "nf4" and problem.given == "none"
    with pytest.raises(ValueError, match="quantization.mode: a checkpoint saved quantized"):
        load_model(str(saved), as_none.quantization)


def test_a_paged_optimizer_on_a_worker_without_gpu_is_a_clear_error():
    from trainer.arguments import _optimizer

    assert _optimizer("adamw") == {} and _optimizer("adamw_8bit") == {"optim": "adamw_bnb_8bit"}
    with pytest.raises(ValueError, match="training.optimizer: a paged optimizer pages its state out of GPU memory, "
                                         "and this worker has no GPU; given 'paged_adamw_8bit'; allowed: adamw, "
                                         "adamw_8bit"):
        _optimizer("paged_adamw_8bit")


def test_a_quantization_mode_the_device_cannot_run_is_a_clear_error(tiny_model_dir, trial_cfg, monkeypatch):
    from transformers import AutoModelForCausalLM

    def no_kernel(*args, **kwargs):  # what bitsandbytes raises on a device it has no kernels for
        raise RuntimeError("no 8-bit matmul kernel for this device (injected by the test)")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_kernel)
    int8 = dataclasses.replace(trial_cfg.quantization, mode="int8")
    with pytest.raises(RuntimeError, match=r"quantization.mode int8: bitsandbytes could not load the model on this "
                                           r"device \(RuntimeError: no 8-bit matmul kernel.*Fix: quantization.mode: none"):
        load_model(str(tiny_model_dir), int8)

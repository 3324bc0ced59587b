"""Speaker swap: consistent in dialogue, summary and references; training split only; seeded ratio."""

from __future__ import annotations

from trainer.augment import augment, speakers, swap_speakers
from trainer.config import AugmentationConfig
from trainer.data import Example


def test_two_speakers_are_exchanged_everywhere_they_are_named():
    e = Example("d1", "#Person1#: Can you help?\n#Person2#: Sure, #Person1#.", "#Person1# asks #Person2# for help.",
                ("#Person1# asks #Person2# for help.",))
    s = swap_speakers(e)
    assert s.dialogue == "#Person2#: Can you help?\n#Person1#: Sure, #Person2#."
    assert s.summary == "#Person2# asks #Person1# for help." and s.references == (s.summary,)
    assert s.id == "d1#swap" and swap_speakers(s).dialogue == e.dialogue  # swapping twice restores it


def test_names_swap_as_whole_words_in_any_script_and_three_speakers_rotate():
    e = Example("k", "민수: 안녕\n지영: 안녕 민수\nAnn: hi Anna", "민수와 지영과 Ann이 인사한다.", ())
    assert speakers(e.dialogue) == ["민수", "지영", "Ann"]
    s = swap_speakers(e)
    assert s.dialogue == "지영: 안녕\nAnn: 안녕 지영\n민수: hi Anna"  # "Anna" is not "Ann"
    assert s.summary == "지영와 Ann과 민수이 인사한다."  # names carrying Korean particles swap too
    assert swap_speakers(Example("m", "Just one line, no speaker.", "x", ())) is None


def test_ratio_and_seed_choose_which_training_rows_get_a_copy():
    train = tuple(Example(f"d{i}", f"A: line {i}\nB: reply", f"A talks to B {i}.", ()) for i in range(10))
    assert augment(train, AugmentationConfig(speaker_swap=0.0)) == train
    half = augment(train, AugmentationConfig(speaker_swap=0.5, seed=1))
    assert half[:10] == train and len(half) == 15 and all(e.id.endswith("#swap") for e in half[10:])
    assert half == augment(train, AugmentationConfig(speaker_swap=0.5, seed=1))
    assert half != augment(train, AugmentationConfig(speaker_swap=0.5, seed=2))
    assert all(e.summary.startswith("B talks to A") for e in half[10:])


def test_paraphrases_are_made_once_per_sweep_keep_speaker_tags_and_a_rerun_reads_the_cache(
        tiny_model_dir, local_data, tmp_path, monkeypatch):
    from orchestrator.planning.loading import parse_spec
    from orchestrator.planning.prepare import prepare, sweep_notes
    from tests.conftest import tiny_spec
    from trainer import paraphrase
    from trainer.augment import training_examples

    monkeypatch.setenv("QLORA_SWEEP_CACHE", str(tmp_path / "cache"))
    raw = tiny_spec(tiny_model_dir, *local_data, tmp_path,
                    augmentation={"paraphrase_model": str(tiny_model_dir), "seed": 3})
    raw["search"]["grid"] = {"prompt": ["v1"], "augmentation.paraphrase": [0.25, 0.5]}
    spec = parse_spec(raw)
    loaded = []
    real_generator = paraphrase.load_generator
    monkeypatch.setattr(paraphrase, "load_generator", lambda *a: loaded.append(a) or real_generator(*a))
    plan, data = prepare(spec)
    assert len(loaded) == 1  # one generator for the sweep: the 0.25 rows are among the 0.5 ones

    by_share = {t.config.augmentation.paraphrase: data[_data_key(t)] for t in plan if t.kind == "trial"}
    quarter, half = by_share[0.25], by_share[0.5]
    assert len(half.paraphrased) == 4 and {e.id for e in quarter.paraphrased} < {e.id for e in half.paraphrased}
    originals = {e.id: e for e in half.train}
    changed = 0
    for row in half.paraphrased:
        source = originals[row.id.removesuffix("#para")]
        tags = [line.split(":")[0] for line in row.dialogue.splitlines()]
        assert tags == [line.split(":")[0] for line in source.dialogue.splitlines()]  # same speakers, same order
        assert row.summary == source.summary
        changed += row.dialogue != source.dialogue
    assert changed > 0
    baseline = next(t for t in plan if t.kind == "baseline")
    assert data[_data_key(baseline)].paraphrased == () and half.eval == data[_data_key(baseline)].eval
    trial = next(t for t in plan if t.config.augmentation.paraphrase == 0.5)
    assert len(training_examples(half, trial.config.augmentation)) == 8 + 4
    notes = sweep_notes(data, spec)["paraphrase"]
    assert str(tiny_model_dir) in notes and "seed 3" in notes and repr(trial.config.augmentation.paraphrase_prompt) in notes

    def no_generator(*args):
        raise AssertionError("a re-run must read every paraphrase from the cache")

    monkeypatch.setattr(paraphrase, "load_generator", no_generator)
    _, again = prepare(spec)
    assert again[_data_key(trial)].paraphrased == half.paraphrased


def _data_key(trial):
    from orchestrator.planning.prepare import data_key as key

    return key(trial)

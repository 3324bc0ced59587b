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

"""Dialogue-summary rows: where they come from (local mirror, local file, hub) and which are used.

The driver loads the rows once and ships them to every trial, so trials on other nodes need no
data files and every trial sees the same seeded train sample and eval subset.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from trainer.config import SINCE_AUGMENTATION, ConfigProblem, DatasetConfig
from trainer.datafiles import DataFileError, read_file

DATA_DIR_ENV = "QLORA_SWEEP_DATA_DIR"
HUB_IDS = {"dialogsum": "knkarthick/dialogsum", "samsum": "knkarthick/samsum"}
_NUMBERED_REFERENCE = re.compile(r"^summary\d+$")


@dataclass(frozen=True)
class Example:
    id: str
    dialogue: str
    summary: str
    """Training target, or the first (scored) reference of an eval row."""
    references: tuple[str, ...]


@dataclass(frozen=True)
class TrialData:
    train: tuple[Example, ...]
    eval: tuple[Example, ...]
    reference_columns: tuple[str, ...]
    """Eval columns the references came from."""
    skipped_rows: tuple[int, int] = (0, 0)
    """(train, eval) rows dropped for an empty or missing dialogue or summary."""
    paraphrased: tuple[Example, ...] = field(default=(), metadata={"since": SINCE_AUGMENTATION})
    """Training rows with paraphrased dialogues (trainer.paraphrase), added to `train` by the trials whose
    augmentation asked for them; never eval rows."""
    paraphrase_source: str = field(default="", metadata={"since": SINCE_AUGMENTATION})
    """How `paraphrased` was made: generator and its identity, prompt, seed, sampling (shown in the notes)."""


@dataclass(frozen=True)
class Source:
    """One split: a local file (and its encoding; None: UTF-8 or detected), or a hub dataset id and split name."""

    path: Path | None = None
    hub_id: str | None = None
    split: str | None = None
    encoding: str | None = None

    def describe(self) -> str:
        return str(self.path) if self.path else f"hub {self.hub_id} split {self.split}"


def mirror_root(cfg: DatasetConfig) -> Path | None:
    root = cfg.mirror_dir or os.environ.get(DATA_DIR_ENV)
    return Path(root) if root else None


def split_source(cfg: DatasetConfig, which: str) -> Source:
    """Where the `train` or `eval` rows come from: local file, else mirror, else hub."""
    local = cfg.train_file if which == "train" else cfg.eval_file
    if local:
        return Source(path=Path(local), encoding=cfg.encoding)
    split = cfg.train_split if which == "train" else cfg.eval_split
    root = mirror_root(cfg)
    if root is not None and (root / cfg.name / f"{split}.jsonl").exists():
        return Source(path=root / cfg.name / f"{split}.jsonl", encoding=cfg.encoding)
    return Source(hub_id=HUB_IDS.get(cfg.name, cfg.name), split=split)


def read_rows(source: Source) -> list[dict]:
    """Rows of a JSONL or CSV file (DataFileError lists its every problem), or of a hub split (needs network or
    the HF cache)."""
    if source.path is None:
        import datasets  # only here: hub loading is the slow, networked path

        return [dict(r) for r in datasets.load_dataset(source.hub_id, split=source.split)]
    read = read_file(source.path, source.encoding)
    if read.problems:
        raise DataFileError(source.path, read.problems)
    return list(read.rows)


def reference_columns(cfg: DatasetConfig, columns: list[str]) -> list[str]:
    """Configured reference columns, else `summary_column`, else summary1, summary2, ..."""
    if cfg.reference_columns:
        return list(cfg.reference_columns)
    if cfg.summary_column in columns:
        return [cfg.summary_column]
    return sorted((c for c in columns if _NUMBERED_REFERENCE.match(c)), key=lambda c: int(c[7:]))


def seeded_sample(rows: list, count: int, seed: int) -> list:
    """A fixed subset: the same rows, in the same order, for the same seed and row count."""
    if count >= len(rows):
        return list(rows)
    picked = sorted(random.Random(seed).sample(range(len(rows)), count))
    return [rows[i] for i in picked]


def load_trial_data(cfg: DatasetConfig) -> TrialData:
    return select_rows(cfg, read_rows(split_source(cfg, "train")), read_rows(split_source(cfg, "eval")))


def select_rows(cfg: DatasetConfig, train_all: list[dict], eval_all: list[dict]) -> TrialData:
    """The usable rows of both splits, then the seeded train sample and eval subset (RowsError: empty rows with
    `empty_rows: error`)."""
    refs = reference_columns(cfg, list(eval_all[0]) if eval_all else [])
    train_ok, train_skipped = usable_rows(train_all, cfg, [cfg.summary_column], "train")
    eval_ok, eval_skipped = usable_rows(eval_all, cfg, refs, "eval")
    train_rows = seeded_sample(train_ok, cfg.train_examples, cfg.sample_seed)
    eval_rows = seeded_sample(eval_ok, cfg.eval_examples, cfg.sample_seed)
    train = tuple(_example(r, i, cfg, [cfg.summary_column]) for i, r in train_rows)
    evals = tuple(_example(r, i, cfg, refs) for i, r in eval_rows)
    return TrialData(train=train, eval=evals, reference_columns=tuple(refs),
                     skipped_rows=(train_skipped, eval_skipped))


class RowsError(ValueError):
    """Rows a setting refuses (`empty_rows: error`), as one problem."""

    def __init__(self, problem: ConfigProblem):
        self.problem = problem
        super().__init__(problem.render())


def usable_rows(rows: list[dict], cfg: DatasetConfig, summaries: list[str], which: str
                ) -> tuple[list[tuple[int, dict]], int]:
    """(file position, row) of rows with a dialogue and at least one summary; how many were not."""
    kept, bad = [], []
    for i, row in enumerate(rows):
        has_dialogue = bool(str(row.get(cfg.dialogue_column) or "").strip())
        if has_dialogue and any(str(row.get(c) or "").strip() for c in summaries):
            kept.append((i, row))
        else:
            bad.append(i)
    if bad and cfg.empty_rows == "error":
        first = rows[bad[0]]
        raise RowsError(ConfigProblem(
            "dataset.empty_rows", f"every {which} row needs a non-empty {cfg.dialogue_column!r} and "
            f"{' or '.join(summaries)}", f"{len(bad)} of {len(rows)} rows without, the first row {bad[0]} (id "
            f"{first.get('fname') or first.get('id') or '-'}) with columns {sorted(first)}", "error: none such",
            "clean the data, map the columns (dataset.dialogue_column / summary_column / reference_columns), "
            "or set dataset.empty_rows: skip"))
    return kept, len(bad)


def normalised(dialogue: str) -> str:
    """A dialogue as the leakage check compares it: whitespace runs as one space, no ends."""
    return " ".join(dialogue.split())


def scored_in_training(data: TrialData, train_all: list[dict], cfg: DatasetConfig) -> list[Example]:
    """The eval rows a trial scores whose dialogue is also a training row's (any usable row of the training file:
    a clone or a larger train_examples may use any of them)."""
    trained = {normalised(str(r.get(cfg.dialogue_column) or "")) for r in train_all}
    return [e for e in data.eval if normalised(e.dialogue) in trained]


def _example(row: dict, index: int, cfg: DatasetConfig, columns: list[str]) -> Example:
    references = tuple(str(row[c]).strip() for c in columns if row.get(c))
    return Example(id=str(row.get("fname") or row.get("id") or index),
                   dialogue=str(row[cfg.dialogue_column]).strip(),
                   summary=references[0] if references else "", references=references)

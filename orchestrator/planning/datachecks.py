"""The data a spec names, checked whole before anything runs: files, encodings, every row, columns, leakage.

`validate`, `plan` and `run` call `data_problems` for each distinct dataset; the file reads are cached
(trainer.datafiles), so each file is read once per process and the trials get rows that were already checked.
"""

from __future__ import annotations

from pathlib import Path

from trainer.config import ConfigProblem, DatasetConfig
from trainer.data import RowsError, Source, TrialData, reference_columns, scored_in_training, select_rows, split_source
from trainer.datafiles import FileProblem, FileRows, read_file

_SPLITS = ("train", "eval")
_LISTED_PROBLEMS = 10  # per file; the rest are counted with their lines
_LISTED_IDS = 5


def data_problems(cfg: DatasetConfig) -> list[ConfigProblem]:
    """Every problem of the dataset's local files at once: missing files, undecodable bytes, broken rows, missing
    columns, no usable rows, and scored eval rows that are also training rows (unless `eval_overlap: allow`)."""
    if cfg.problems("dataset"):
        return []  # no files named, or an unknown encoding: reported by DatasetConfig.problems
    problems: list[ConfigProblem] = []
    read = {which: _split_rows(cfg, which, problems) for which in _SPLITS}
    if problems or any(rows is None for rows in read.values()):
        return problems  # a hub split is checked by the datasets library when it loads
    try:
        data = select_rows(cfg, list(read["train"].rows), list(read["eval"].rows))
    except RowsError as exc:
        return [exc.problem]
    return _count_problems(cfg, data) + _overlap_problems(cfg, data, read)


def _split_rows(cfg: DatasetConfig, which: str, problems: list[ConfigProblem]) -> FileRows | None:
    source = split_source(cfg, which)
    key = _key(cfg, which)
    if source.path is None:
        if cfg.mirror_dir:  # the user named a mirror, which must then hold the split
            split = cfg.train_split if which == "train" else cfg.eval_split
            problems.append(ConfigProblem("dataset.mirror_dir", "an explicit mirror must hold the split",
                                          cfg.mirror_dir, f"a folder with {cfg.name}/{split}.jsonl",
                                          "fix the path, or set mirror_dir: null to use "
                                          "$QLORA_SWEEP_DATA_DIR or the hub"))
        return None
    if not source.path.is_file() or source.path.suffix not in (".jsonl", ".csv"):
        problems.append(ConfigProblem(key, "the data file must exist and be .jsonl or .csv", str(source.path),
                                      "an existing .jsonl or .csv file", "check the path (relative to cwd)"))
        return None
    try:
        rows = read_file(source.path, source.encoding)
    except OSError as exc:  # permissions, a file that vanished or cannot be read
        problems.append(ConfigProblem(key, "the data file must be readable", str(source.path),
                                      "a file this user can read", f"check its permissions ({exc.strerror})"))
        return None
    problems += _file_problems(key, source.path, rows.problems)
    if not rows.problems:
        problems += _column_problems(cfg, which, source, rows)
    return rows


def _key(cfg: DatasetConfig, which: str) -> str:
    return f"dataset.{which}_file" if (cfg.train_file if which == "train" else cfg.eval_file) else "dataset.name"


def _file_problems(key: str, path: Path, found: tuple[FileProblem, ...]) -> list[ConfigProblem]:
    out = [ConfigProblem(f"{key} ({path}" + (f", line {p.line})" if p.line else ")"), p.invariant, p.found,
                         p.allowed, p.fix) for p in found[:_LISTED_PROBLEMS]]
    rest = found[_LISTED_PROBLEMS:]
    if rest:
        lines = ", ".join(str(p.line) for p in rest[:20]) + (", ..." if len(rest) > 20 else "")
        out.append(ConfigProblem(f"{key} ({path})", "every row must parse", f"{len(rest)} more broken lines: {lines}",
                                 "rows like those above", "fix them as above"))
    return out


def _column_problems(cfg: DatasetConfig, which: str, source: Source, rows: FileRows) -> list[ConfigProblem]:
    columns = list(rows.columns)
    wanted = [cfg.dialogue_column] + ([cfg.summary_column] if which == "train"
                                      else reference_columns(cfg, columns)[:1] or [cfg.summary_column])
    return [ConfigProblem(f"dataset ({which}: {source.path.name})", "the column must exist", column,
                          ", ".join(columns) or "no rows",
                          "set dataset.dialogue_column / summary_column / reference_columns")
            for column in wanted if column not in columns]


def _count_problems(cfg: DatasetConfig, data: TrialData) -> list[ConfigProblem]:
    return [ConfigProblem(_key(cfg, which), f"the {which} file needs at least one usable row", "0 usable rows "
                          f"({skipped} without a dialogue or summary)", ">= 1 row with a dialogue and a summary",
                          "check the file and the column names (dataset.dialogue_column / summary_column)")
            for which, rows, skipped in zip(_SPLITS, (data.train, data.eval), data.skipped_rows) if not rows]


def _overlap_problems(cfg: DatasetConfig, data: TrialData, read: dict[str, FileRows]) -> list[ConfigProblem]:
    leaked = scored_in_training(data, list(read["train"].rows), cfg)
    if not leaked or cfg.eval_overlap == "allow":
        return []
    train, evals = (split_source(cfg, which).path for which in _SPLITS)
    same = train.resolve() == evals.resolve()
    ids = ", ".join(_row_name(e.id, read["eval"]) for e in leaked[:_LISTED_IDS])
    ids += ", ..." if len(leaked) > _LISTED_IDS else ""
    where = f"{evals} is also the training file" if same else f"{evals} against {train}"
    return [ConfigProblem("dataset.eval_overlap", "a scored eval row must not be a training row (its score would "
                          "measure memorisation)", f"{len(leaked)} of {len(data.eval)} scored eval rows have a "
                          f"dialogue that is also in the training file ({where}; whitespace ignored): {ids}",
                          "eval rows whose dialogues no training row has",
                          ("give a separate eval file" if same else "remove those rows from one of the files") +
                          ", or set dataset.eval_overlap: allow (the leaderboard header then says how many)")]


def _row_name(example_id: str, rows: FileRows) -> str:
    """A row's id, or its line where the file has no id column (trainer.data numbers such rows by position)."""
    if example_id.isdigit() and int(example_id) < len(rows.rows):
        row = rows.rows[int(example_id)]
        if not (row.get("fname") or row.get("id")):
            return f"line {rows.lines[int(example_id)]}"
    return example_id


def data_lines(cfg: DatasetConfig) -> list[str]:
    """What `sweep plan` says about a dataset's local files: rows, usable, used against asked, the encoding read,
    and eval rows that are also training rows."""
    read = {which: _readable(cfg, which) for which in _SPLITS}
    if any(rows is None for rows in read.values()):
        return []
    data = select_rows(cfg, list(read["train"].rows), list(read["eval"].rows))
    lines = [_split_line(cfg, which, read[which], used, skipped) for which, used, skipped
             in zip(_SPLITS, (data.train, data.eval), data.skipped_rows)]
    leaked = scored_in_training(data, list(read["train"].rows), cfg)
    if leaked:
        lines.append(f"  eval rows also in training: {len(leaked)} of {len(data.eval)} scored "
                     f"(dataset.eval_overlap: {cfg.eval_overlap})")
    return lines


def _readable(cfg: DatasetConfig, which: str) -> FileRows | None:
    source = split_source(cfg, which)
    if source.path is None or not source.path.is_file():
        return None
    rows = read_file(source.path, source.encoding)
    return None if rows.problems else rows


def _split_line(cfg: DatasetConfig, which: str, rows: FileRows, used: tuple, skipped: int) -> str:
    asked = cfg.train_examples if which == "train" else cfg.eval_examples
    path = split_source(cfg, which).path
    line = f"  {which} {path}: {len(rows.rows)} rows, {len(rows.rows) - skipped} usable, {len(used)} used"
    if len(used) < asked:
        line += f", fewer than dataset.{which}_examples: {asked}"
    if rows.detected or rows.encoding != "utf-8":
        line += f"; read as {rows.encoding}" + (" (detected)" if rows.detected else "")
    return line

"""Mid-trial checkpoints: where a trial saves them, which one is complete, and where a new attempt resumes.

The Trainer writes `checkpoint-<step>/` (adapter, optimizer, scheduler, RNG states, trainer state with the
step, from which it skips the batches already seen) under `<trial dir>/trainer/`. It does not write them
atomically, so a checkpoint counts only once `complete.json` is in it, written last with an atomic rename;
then every checkpoint but it and the complete one before it is deleted. A kill at any moment leaves the last
complete one usable. `complete.json` also records each file's size and CRC-32, so a checkpoint damaged after it
was saved (a truncated copy, a bad disk) is found at resume, and the one before it (or step 0) used instead.
The cost: up to three checkpoints on disk while the third is written. A save that fails for lack of space
fails the trial as DiskFull, naming the step; the checkpoint before it stays resumable.
No torch or transformers here: the Ray task reads the resume step before a trial imports anything.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import shutil
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from trainer import events, identity
from trainer.arguments import TRAINER_DIR
from trainer.config import TrialConfig

_COMPLETE = "complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_CRC_CHUNK_BYTES = 2**22


def resume_key(cfg: TrialConfig, data) -> str:
    """What a checkpoint must have been trained on to be resumed (trainer.identity): config, rows and the
    model's files as they are now on this machine."""
    from trainer.models import model_identity

    return identity.resume_key(cfg, data, model_identity(cfg.model.name))


def last_checkpoint(out_dir: Path, key: str) -> tuple[Path | None, int]:
    """(folder, step) of the last complete, undamaged checkpoint trained as `key`; (None, 0) when there is none.
    Incomplete checkpoints, those of another config and damaged ones are deleted: they can never be resumed. A
    damaged one (a file truncated or changed since it was saved) is said on stderr, the trial's log, with
    where the trial resumes instead: the checkpoint before it, or step 0."""
    found: list[tuple[int, Path]] = []
    for path in _checkpoints(out_dir):
        if _marker(path).get("resume_key") == key:
            found.append((_step_of(path), path))
        else:
            shutil.rmtree(path, ignore_errors=True)
    for step, path in sorted(found, reverse=True):
        damage = _damage(path)
        if damage is None:
            return path, step
        older = [s for s, _ in found if s < step]
        print(f"checkpoint of step {step} is damaged ({damage}); it is deleted and the trial resumes from "
              + (f"the checkpoint of step {max(older)}" if older else "step 0"), file=sys.stderr, flush=True)
        shutil.rmtree(path, ignore_errors=True)
    return None, 0


def latest_complete(out_dir: Path) -> tuple[Path | None, int]:
    """(folder, step) of the newest complete, undamaged checkpoint in a trial's folder, whatever it was trained
    as, without deleting anything: what `sweep clone --warm-start` and `sweep extend` snapshot. (None, 0) when
    there is none."""
    found = [(_step_of(p), p) for p in _checkpoints(out_dir) if (p / _COMPLETE).is_file()]
    for step, path in sorted(found, reverse=True):
        if _damage(path) is None:
            return path, step
    return None, 0


def _marker(folder: Path) -> dict:
    """The checkpoint's complete.json; {} when it is missing or unreadable (the checkpoint never completed)."""
    try:
        return json.loads((folder / _COMPLETE).read_text())
    except (OSError, ValueError):
        return {}


def _step_of(folder: Path) -> int:
    return int(_CHECKPOINT.match(folder.name).group(1))


def _damage(folder: Path) -> str | None:
    """What differs from the files as they were saved (size and CRC-32 each, recorded in complete.json); None
    when nothing does, or for a checkpoint saved before the record was kept."""
    marker = _marker(folder)
    saved = marker.get("files")
    if saved is None:
        return None if marker else "its complete.json is unreadable"
    for name, (size_bytes, crc) in sorted(saved.items()):
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        stat = path.stat()
        if stat.st_size != size_bytes:
            return f"{name} has {stat.st_size} bytes, {size_bytes} when saved"
        if _file_crc32(str(path), stat.st_size, stat.st_mtime_ns) != crc:
            return f"{name} changed since it was saved (CRC-32)"
    return None


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CRC_CHUNK_BYTES):
            crc = zlib.crc32(chunk, crc)
    return crc


@functools.lru_cache(maxsize=256)
def _file_crc32(path: str, size_bytes: int, mtime_ns: int) -> int:
    """A file's CRC-32, once per process while its size and mtime stay (about 1 s per GB): the Ray task's resume
    step and the trial's own resume check the same checkpoint."""
    return _crc32(Path(path))


def _manifest(folder: Path) -> dict[str, list[int]]:
    """Size and CRC-32 of every file of a saved checkpoint, by path inside it (about 1 s per GB)."""
    return {str(p.relative_to(folder)): [p.stat().st_size, _crc32(p)] for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith((_COMPLETE, f".{_COMPLETE}"))}


def snapshot(checkpoint: Path, into: Path) -> Path:
    """Copy a complete checkpoint to `into/<its name>` (the parent goes on and deletes its older checkpoints)."""
    target = into / checkpoint.name
    shutil.copytree(checkpoint, target, dirs_exist_ok=True)
    if not (target / _COMPLETE).is_file():  # deleted while copied: the parent moved on to a newer one
        shutil.rmtree(target, ignore_errors=True)
        raise FileNotFoundError(f"checkpoint {checkpoint} was replaced while it was copied; try again")
    return target


def seed_warm_start(out_dir: Path, warm, key: str) -> None:
    """A cloned or extended trial's first attempt: its parent's snapshot becomes its own first complete checkpoint,
    marked with its key and the parent's points (which it then reports as its first, inherited, ones). With
    `fresh_optimizer` the optimizer and schedule are left out, so the Trainer starts them again."""
    if warm is None or last_checkpoint(out_dir, key)[0] is not None:
        return  # a plain trial, or a child's later attempt: its own checkpoints come first
    source = Path(warm.checkpoint)
    target = out_dir / TRAINER_DIR / source.name
    shutil.copytree(source, target, dirs_exist_ok=True)
    if warm.fresh_optimizer:
        for name in ("optimizer.pt", "scheduler.pt"):
            (target / name).unlink(missing_ok=True)
    mark_complete(target, key, reported_points(source))


def remove_checkpoints(out_dir: Path) -> None:
    """A finished trial needs none (they hold the optimizer state: often more than the adapter)."""
    for path in _checkpoints(out_dir):
        shutil.rmtree(path, ignore_errors=True)


def _checkpoints(out_dir: Path) -> list[Path]:
    folder = out_dir / TRAINER_DIR
    return [p for p in folder.iterdir() if _CHECKPOINT.match(p.name) and p.is_dir()] if folder.is_dir() else []


def mark_complete(folder: Path, key: str, points: list[events.Event]) -> None:
    """Called once the Trainer has saved `folder`: record that it is complete, trained as `key`, with the curve
    points reported up to it (a resumed attempt reports them again, so no point is lost while no driver
    listened), atomically; then delete every other checkpoint."""
    partial = folder / f".{_COMPLETE}.partial"
    partial.write_text(json.dumps({"resume_key": key, "points": [events.encode(p) for p in points],
                                   "files": _manifest(folder)}))
    os.replace(partial, folder / _COMPLETE)  # atomic: the checkpoint is complete or it is not
    step = _step_of(folder)
    older = sorted(((_step_of(p), p) for p in _checkpoints(folder.parent.parent) if p != folder), reverse=True)
    kept = next((p for s, p in older if s < step and (p / _COMPLETE).is_file()), None)
    for _, other in older:
        if other != kept:  # the one before stays: a fallback should this one be damaged later
            shutil.rmtree(other, ignore_errors=True)


class DiskFull(OSError):
    """A checkpoint could not be saved for lack of space: the trial fails with this reason (never retried: it
    would fail again) and its previous complete checkpoint stays resumable."""


_FULL_WORDS = ("No space left on device", "StorageFull", "Disk quota exceeded")
_WRITE_FAILED = "write failed"  # torch's PytorchStreamWriter: the errno is lost on the way
_NEARLY_FULL_BYTES = 2**20


@contextmanager
def disk_full_named(out_dir: Path, step: Callable[[], int]) -> Iterator[None]:
    """Training inside: a save that fails for lack of space becomes DiskFull("disk full while saving step N"),
    with its partial checkpoint removed (it frees the space and could never be resumed)."""
    try:
        yield
    except Exception as exc:
        if not _disk_full(exc, out_dir):
            raise
        failed = out_dir / TRAINER_DIR / f"checkpoint-{step()}"
        if failed.is_dir() and not (failed / _COMPLETE).is_file():
            shutil.rmtree(failed, ignore_errors=True)
        kept = latest_complete(out_dir)[1]
        raise DiskFull(errno.ENOSPC, f"disk full while saving step {step()} under {out_dir}; "
                       + (f"the checkpoint of step {kept} stays resumable" if kept else "no checkpoint was kept")
                       + ". Fix: free space there (or point output.run_dir at a larger disk), then `sweep run` "
                       "again to resume") from exc


def _disk_full(error: BaseException, out_dir: Path) -> bool:
    """ENOSPC anywhere in the chain, or the words of the writers that drop it; a vaguer "write failed" counts
    only with under 1 MiB left where the trial writes."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    if any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in chain):
        return True
    text = " ".join(str(e) for e in chain)
    if any(words in text for words in _FULL_WORDS):
        return True
    return _WRITE_FAILED in text and shutil.disk_usage(out_dir).free < _NEARLY_FULL_BYTES


def reported_points(folder: Path) -> list[events.Event]:
    """The metric events a complete checkpoint's attempt had reported up to it."""
    return [events.decode(p) for p in json.loads((folder / _COMPLETE).read_text())["points"]]

"""Mid-trial checkpoints: where a trial saves them, which one is complete, and where a new attempt resumes.

The Trainer writes `checkpoint-<step>/` (adapter, optimizer, scheduler, RNG states, trainer state with the
step, from which it skips the batches already seen) under `<trial dir>/trainer/`. It does not write them
atomically, so a checkpoint counts only once `complete.json` is in it, written last with an atomic rename;
then every other checkpoint is deleted. A kill at any moment leaves the last complete one usable.
No torch or transformers here: the Ray task reads the resume step before a trial imports anything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from trainer import events, identity
from trainer.config import TrialConfig

TRAINER_DIR = "trainer"
_COMPLETE = "complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def resume_key(cfg: TrialConfig, data) -> str:
    """What a checkpoint must have been trained on to be resumed (trainer.identity): config, rows and the
    model's files as they are now on this machine."""
    from trainer.models import model_identity

    return identity.resume_key(cfg, data, model_identity(cfg.model.name))


def last_checkpoint(out_dir: Path, key: str) -> tuple[Path | None, int]:
    """(folder, step) of the last complete checkpoint trained as `key`; (None, 0) when there is none.
    Incomplete checkpoints and those of another config are deleted: they can never be resumed."""
    found: list[tuple[int, Path]] = []
    for path in _checkpoints(out_dir):
        marker = path / _COMPLETE
        if marker.is_file() and json.loads(marker.read_text()).get("resume_key") == key:
            found.append((int(_CHECKPOINT.match(path.name).group(1)), path))
        else:
            shutil.rmtree(path, ignore_errors=True)
    if not found:
        return None, 0
    step, path = max(found)
    return path, step


def latest_complete(out_dir: Path) -> tuple[Path | None, int]:
    """(folder, step) of the newest complete checkpoint in a trial's folder, whatever it was trained as, without
    deleting anything: what `sweep clone --warm-start` and `sweep extend` snapshot. (None, 0) when there is none."""
    found = [(int(_CHECKPOINT.match(p.name).group(1)), p) for p in _checkpoints(out_dir) if (p / _COMPLETE).is_file()]
    if not found:
        return None, 0
    step, path = max(found)
    return path, step


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
    partial.write_text(json.dumps({"resume_key": key, "points": [events.encode(p) for p in points]}))
    os.replace(partial, folder / _COMPLETE)  # atomic: the checkpoint is complete or it is not
    for other in _checkpoints(folder.parent.parent):
        if other != folder:
            shutil.rmtree(other, ignore_errors=True)


def reported_points(folder: Path) -> list[events.Event]:
    """The metric events a complete checkpoint's attempt had reported up to it."""
    return [events.decode(p) for p in json.loads((folder / _COMPLETE).read_text())["points"]]

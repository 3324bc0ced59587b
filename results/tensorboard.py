"""TensorBoard event files: one run directory per trial under the sweep's log directory, with HParams.

Written by the driver from the events the trials report, so curves exist even for trials that
ran on other machines, and TensorBoard's HParams view compares every trial of the sweep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class TensorBoardWriter:
    """Event files per trial: scalars as they come, and the HParams record; `close()` flushes them."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self._writers: dict[str, Any] = {}

    def scalar(self, trial: str, name: str, step: int, value: float) -> None:
        self._writer(trial).add_scalar(name, value, step)

    def hparams(self, trial: str, params: dict[str, Any], metrics: dict[str, float]) -> None:
        """Record the trial's swept values and final metrics for the HParams dashboard."""
        from torch.utils.tensorboard.summary import hparams

        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        finals = {f"hparams/{k}": float(v) for k, v in metrics.items()}
        writer = self._writer(trial)
        for summary in hparams(clean, finals):
            writer.file_writer.add_summary(summary)
        for name, value in finals.items():
            writer.add_scalar(name, value)
        writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def _writer(self, trial: str):
        if trial not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[trial] = SummaryWriter(log_dir=str(self.log_dir / trial))
        return self._writers[trial]

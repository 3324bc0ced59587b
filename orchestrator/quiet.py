"""Process environment shared by the driver and its workers: quiet third-party progress bars and logs."""

from __future__ import annotations

import os

# No progress bars or per-call warnings from transformers/datasets/tqdm in the driver's terminal,
# and no tokenizer thread pools competing with a trial's torch threads.
QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
             "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}


def quiet_third_party() -> None:
    """Apply QUIET_ENV to this process, keeping anything the user set explicitly."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)

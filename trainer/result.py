"""What one trial returns to whoever ran it. Light (no torch): the driver unpickles it, and stand-in trial
functions in tests build it without importing the training stack."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrialResult:
    metrics: dict[str, float]
    predictions: list[dict]
    adapter_dir: str | None
    timings_s: dict[str, float]
    """Wall seconds of each named step."""
    scoring: dict = field(default_factory=dict)
    """How the metrics were computed: metric version, tokenizer, stemming, references, examples."""
    environment: dict = field(default_factory=dict)
    """Where it ran: device, resolved compute dtype, library versions, peak memory (trainer.hardware)."""

"""Retry policy: which failed trial runs again, and with what."""

from __future__ import annotations

import dataclasses

from orchestrator.backends.backend import Outcome
from sweeps.spec import ResourcesConfig
from trainer import events as ev
from trainer.config import TrialConfig

MAX_RETRIES = 1
"""An out-of-memory trial is retried once: a second failure at half the batch is the trial's, not its batch's."""


def halved_batch(config: TrialConfig) -> TrialConfig | None:
    """Half the micro batch, twice the accumulation (same effective batch); None at micro batch 1."""
    t = config.training
    if t.micro_batch_size < 2:
        return None
    return dataclasses.replace(config, training=dataclasses.replace(
        t, micro_batch_size=t.micro_batch_size // 2, gradient_accumulation_steps=t.gradient_accumulation_steps * 2))


def retry_config(config: TrialConfig, attempts: int, outcome: Outcome,
                 resources: ResourcesConfig) -> tuple[TrialConfig, str] | None:
    """(config, reason) to run a failed trial again with: out of memory (torch's, or Ray's memory monitor
    killing the worker), allowed by the spec, not yet retried, with a micro batch left to halve. Else None."""
    smaller = halved_batch(config)
    if (attempts >= MAX_RETRIES or smaller is None or not resources.retry_out_of_memory
            or outcome.failure is not ev.FailureKind.OUT_OF_MEMORY):
        return None
    t = smaller.training
    return smaller, (f"out of memory; retried with micro_batch_size={t.micro_batch_size}, "
                     f"gradient_accumulation_steps={t.gradient_accumulation_steps}. First error: {outcome.error[-500:]}")

"""Scoring provenance: one letter per distinct way a sweep's scores were computed (tokenizer, references, metric
version, eval examples, decoding), so that the views rank and compare only within a letter."""

from __future__ import annotations

import json

from results.store import TrialSummary


def scoring_letters(trials: list[TrialSummary]) -> dict[str, str]:
    """Trial name -> A, B, ... by distinct scoring provenance, in order of first appearance."""
    keys: dict[str, str] = {}
    out = {}
    for t in trials:
        key = json.dumps(t.scoring, sort_keys=True)
        out[t.name] = keys.setdefault(key, chr(ord("A") + len(keys)))
    return out


def scoring_groups(trials: list[TrialSummary]) -> dict[str, dict | None]:
    """Letter -> the provenance it stands for (None: not recorded, stored before provenance was)."""
    letters = scoring_letters(trials)
    return {letters[t.name]: t.scoring for t in trials if t.status == "completed"}

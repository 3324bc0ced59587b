"""The spec a sweep ran with, as typed objects again: the result views read it through the schema, never by
dict paths. A spec stored by an older version loads too: keys it lacks take their defaults, and keys this
version no longer has are ignored (the row is history, not input to validate)."""

from __future__ import annotations

from sweeps import schema
from sweeps.spec import SweepSpec
from results.store import SweepSummary


def stored_spec(summary: SweepSummary) -> SweepSpec:
    ignored: list = []  # problems of a stored spec are not the reader's to fix
    return schema.build(SweepSpec, summary.spec, "", ignored)

"""Requests from other terminals to a sweep's live driver, kept in the store so that they reach it from any
machine: stop the sweep or one trial, resume a stopped trial, and the queue of trials added while it runs
(`sweep clone`, `sweep extend`). The commands write them; the driver takes them on its next poll.
"""

from __future__ import annotations

from sqlalchemy import select, update

from results.busy import waits_when_locked
from results.database import StorePart
from results.states import TrialState
from results.tables import SweepRow, TrialRow


@waits_when_locked
class ControlRequests(StorePart):
    def request_stop(self, sweep_name: str, trial_name: str | None = None) -> bool:
        """Ask the sweep's driver to stop the sweep or one trial; False if there is no such trial."""
        with self.session() as s:
            sweep = s.scalar(select(SweepRow).where(SweepRow.name == sweep_name))
            if trial_name is None:
                sweep.stop_requested = True
                return True
            found = s.execute(update(TrialRow).where(TrialRow.sweep_id == sweep.id, TrialRow.name == trial_name)
                              .values(stop_requested=True))
            return found.rowcount > 0

    def stop_requests(self, sweep_id: int) -> tuple[bool, set[int]]:
        """(whole sweep asked to stop, ids of the trials asked to stop)."""
        with self.session() as s:
            whole = bool(s.scalar(select(SweepRow.stop_requested).where(SweepRow.id == sweep_id)))
            ids = set(s.scalars(select(TrialRow.id).where(TrialRow.sweep_id == sweep_id, TrialRow.stop_requested)))
            return whole, ids

    def request_resume(self, sweep_name: str, trial_name: str) -> bool:
        """Ask the sweep's live driver to run a stopped trial again; False if there is no such trial."""
        with self.session() as s:
            found = s.execute(update(TrialRow).where(
                TrialRow.sweep_id == select(SweepRow.id).where(SweepRow.name == sweep_name).scalar_subquery(),
                TrialRow.name == trial_name).values(resume_requested=True, stop_requested=False))
            return found.rowcount > 0

    def take_resume_requests(self, sweep_id: int) -> set[int]:
        """Ids of the trials `sweep resume` asked for since the last call (the requests are cleared)."""
        with self.session() as s:
            ids = set(s.scalars(select(TrialRow.id).where(TrialRow.sweep_id == sweep_id, TrialRow.resume_requested)))
            if ids:
                s.execute(update(TrialRow).where(TrialRow.id.in_(ids)).values(resume_requested=False))
            return ids

    def add_trial(self, sweep_name: str, name: str, params: dict, config: dict, content_key: str, origin: str,
                  parent_id: int, forked_at_step: int | None, baseline: str | None) -> int | None:
        """A fine-tune added to a sweep while it runs (a clone, an extension), pending; None when the name is
        taken (nothing is written then)."""
        with self.session() as s:
            sweep_id = s.scalar(select(SweepRow.id).where(SweepRow.name == sweep_name))
            if s.scalar(select(TrialRow.id).where(TrialRow.sweep_id == sweep_id, TrialRow.name == name)) is not None:
                return None
            row = TrialRow(sweep_id=sweep_id, name=name, kind="trial", params=params, config=config,
                           content_key=content_key, status=TrialState.PENDING.value, origin=origin,
                           parent_id=parent_id, forked_at_step=forked_at_step, baseline=baseline)
            s.add(row)
            s.flush()
            return row.id

    def added_trials(self, sweep_id: int, known: set[int] = frozenset()
                     ) -> list[tuple[int, str, dict, dict, str | None]]:
        """(id, name, params, config, baseline) of each trial added while the sweep ran (clones, extensions), but
        the `known` ids (those a live driver has already)."""
        with self.session() as s:
            rows = s.scalars(select(TrialRow).where(TrialRow.sweep_id == sweep_id, TrialRow.origin.is_not(None),
                                                    TrialRow.id.not_in(known)).order_by(TrialRow.id))
            return [(r.id, r.name, dict(r.params), dict(r.config), r.baseline) for r in rows]

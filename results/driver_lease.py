"""Which driver holds a sweep: at most one at a time, claimed in one transaction, kept alive by a heartbeat,
released when it ends, and taken over (its unfinished trials marked interrupted) once it is gone.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from results.busy import waits_when_locked
from results.database import StorePart, aware
from results.states import UNFINISHED_STATES, TrialState
from results.tables import SweepRow, TrialRow, utcnow


@waits_when_locked
class DriverLease(StorePart):
    def open_sweep(self, name: str, spec: dict, run_dir: str, notes: dict, driver: str | None = None,
                   replacing: str | None = None) -> int | None:
        """Create or update the sweep and claim it for `driver`, in one transaction: its id, or None (and
        nothing written) when the sweep's driver is no longer `replacing` (None, or a dead one seen a moment
        ago) because another driver claimed it, or created it, in between. `driver` None records the sweep
        without claiming it (imports, tests), and only while no driver holds it."""
        values = dict(spec=spec, run_dir=run_dir, notes=notes, stop_requested=False)
        if driver is not None:
            values.update(driver=driver, heartbeat_at=utcnow())
        try:
            with self.session() as s:
                sweep_id = s.scalar(select(SweepRow.id).where(SweepRow.name == name))
                if sweep_id is None:
                    row = SweepRow(name=name, **values)
                    s.add(row)
                    s.flush()
                    return row.id
                claim = update(SweepRow).where(SweepRow.id == sweep_id, _held_by(replacing)).values(**values)
                if s.execute(claim).rowcount != 1:
                    return None
                s.execute(update(TrialRow).where(TrialRow.sweep_id == sweep_id).values(stop_requested=False))
                return sweep_id
        except IntegrityError:  # another driver created the same sweep at the same instant, and won
            return None

    def heartbeat(self, sweep_id: int) -> None:
        with self.session() as s:
            s.execute(update(SweepRow).where(SweepRow.id == sweep_id).values(heartbeat_at=utcnow()))

    def release_sweep(self, sweep_id: int, driver: str) -> None:
        """Give the sweep up, if `driver` still holds it."""
        with self.session() as s:
            s.execute(update(SweepRow).where(SweepRow.id == sweep_id, SweepRow.driver == driver)
                      .values(driver=None, stop_requested=False))

    def driver_of(self, sweep_name: str) -> tuple[str | None, datetime | None] | None:
        """(driver, last heartbeat) of a sweep, None when there is no such sweep; reads nothing else."""
        with self.session() as s:
            found = s.execute(select(SweepRow.driver, SweepRow.heartbeat_at).where(SweepRow.name == sweep_name)).first()
            return None if found is None else (found.driver, aware(found.heartbeat_at))

    def interrupt_unfinished(self, sweep_name: str, reason: str, gone_driver: str | None) -> list[str] | None:
        """Mark the pending and running trials of a sweep whose driver `gone_driver` is gone as interrupted,
        and clear it; None (nothing changed) when another driver has claimed the sweep since it was read."""
        with self.session() as s:
            release = update(SweepRow).where(SweepRow.name == sweep_name, _held_by(gone_driver)).values(driver=None)
            if s.execute(release).rowcount != 1:
                return None
            rows = s.scalars(select(TrialRow).join(SweepRow).where(
                SweepRow.name == sweep_name, TrialRow.status.in_(UNFINISHED_STATES))).all()
            for row in rows:
                row.status, row.finished_at, row.error = TrialState.INTERRUPTED.value, utcnow(), reason
            return [r.name for r in rows]


def _held_by(driver: str | None):
    """SQL condition: the sweep is held by `driver` (None: by no driver)."""
    return SweepRow.driver.is_(None) if driver is None else SweepRow.driver == driver

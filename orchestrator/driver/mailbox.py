"""The driver's side of the store's lease and control parts: it keeps its claim on the sweep alive, and reads
what other terminals ask of it (`sweep stop`, `clone`, `extend`, `resume`), each on its own clock, so that the
loop may call it every pass for the cost of a clock read.
"""

from __future__ import annotations

from orchestrator.driver.control import HEARTBEAT_INTERVAL_S
from orchestrator.driver.steering import added_plan
from orchestrator.planning.plan import PlannedTrial
from results.store import Store

REQUEST_POLL_S = 1.0
"""How often the store is read for `sweep stop`, `clone`, `extend` and `resume` requests (one small query each)."""


class Mailbox:
    def __init__(self, store: Store, sweep_id: int):
        self.lease, self.control, self.sweep_id = store.lease, store.control, sweep_id
        self._next_beat_s = self._next_poll_s = 0.0

    def beat(self, now_s: float) -> None:
        """The heartbeat that tells `sweep status` and a second `sweep run` this driver lives (monotonic seconds)."""
        if now_s >= self._next_beat_s:
            self.lease.heartbeat(self.sweep_id)
            self._next_beat_s = now_s + HEARTBEAT_INTERVAL_S

    def stops(self, now_s: float) -> tuple[bool, set[int]] | None:
        """(whole sweep asked to stop, ids of the trials asked to stop) once every REQUEST_POLL_S; None between."""
        if now_s < self._next_poll_s:
            return None
        self._next_poll_s = now_s + REQUEST_POLL_S
        return self.control.stop_requests(self.sweep_id)

    def added(self, known: set[int]) -> list[PlannedTrial]:
        """Trials `sweep clone` and `sweep extend` added that the driver does not have yet."""
        return added_plan(self.control, self.sweep_id, known)

    def resumes(self) -> set[int]:
        """Trials `sweep resume` asked for since the last call."""
        return self.control.take_resume_requests(self.sweep_id)

"""A stall is an error, not a hang: the driver's watchdog over the whole pipeline.

Progress is anything a stage got done: a group started, a version published, a ledger row,
a dropped group, a worker's processed count (from its heartbeats), or a sample written,
claimed or consumed in the store. When none of these moves for ``stall_timeout_s`` the run
fails with one line that says where it is stuck.
"""

from __future__ import annotations

import time
from typing import Any

from unirl_stream.api import StoreStats


class StallWatchdog:
    def __init__(self, timeout_s: float, clock: Any = time.time) -> None:
        self.timeout_s = timeout_s
        self._clock = clock
        self._seen: tuple[Any, ...] | None = None
        self._since = clock()

    def check(self, control: Any, stats: StoreStats) -> str | None:
        """None while the run moves; the diagnostic line once it has not for too long."""
        now = self._clock()
        tasks = tuple(sorted((k, t.ready, t.leased, t.consumed) for k, t in stats.tasks.items()))
        seen = (control.progress(), stats.samples, stats.put_bytes_total, stats.deleted_total, tasks)
        if seen != self._seen:
            self._seen, self._since = seen, now
            return None
        if now - self._since < self.timeout_s:
            return None
        return diagnose(control, stats, now - self._since, now)


def diagnose(control: Any, stats: StoreStats, stalled_s: float, now: float) -> str:
    g = control.gate()
    queues = ", ".join(f"{k} {t.ready}/{t.leased}" for k, t in sorted(stats.tasks.items()))
    idle = ", ".join(f"{src} {now - w.last_progress:.0f} s"
                     for src, w in sorted(control.workers().items())) or "no stage reported"
    return (f"stalled: no stage made progress for {stalled_s:.0f} s "
            f"(pipeline.stall_timeout_s); gate: position {g.position}, allowance {g.allowance}, "
            f"version {g.version}, dropped groups {g.dropped_groups}; "
            f"store ready/leased: {queues or 'no tasks'}, {stats.samples} samples stored; "
            f"stage idle: {idle}")

"""Folds metric events into the numbers of a Snapshot (no sockets, no threads, no clock).

``MetricsState.apply(event, now)`` and ``snapshot(now)`` take the receive time from the
caller so tests can drive windows deterministically. Window expiry uses receive time (the
driver's clock), while rates divide by the workers' own busy+idle seconds: that way a
worker on another host with a skewed clock still reports the right samples/s, and the
first seconds of a run are not diluted by a window that has not filled yet.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec

from unirl_stream.api import StoreStats
from unirl_stream.events import MetricEvent, SampleOutcome, StageTick, StoreTick, TrainStep
from unirl_stream.monitor.snapshot import (
    BusView,
    LearningView,
    Snapshot,
    StageView,
    StalenessView,
    StoreView,
)

STAGE_ORDER = ("rollout", "reward", "trainer")


@dataclass
class _Worker:
    stage: str
    last_seen: float = 0.0
    ticks: deque[tuple[float, int, float]] = field(default_factory=deque)  # recv, n, span
    processed: int = 0
    dropped: int = 0
    idle_s: deque[tuple[float, float]] = field(default_factory=deque)  # recv, idle
    policy_version: int = -1
    values: dict[str, float] = field(default_factory=dict)


class MetricsState:
    def __init__(
        self,
        run_id: str = "",
        eta: int = 1,
        window_s: float = 10.0,
        alive_s: float = 5.0,
        expected_workers: Mapping[str, int] | None = None,
        started_at: float = 0.0,
    ) -> None:
        self.run_id, self.eta, self.window_s, self.alive_s = run_id, eta, window_s, alive_s
        self.expected = dict(expected_workers or {})
        # Which store task feeds which stage, as the stages' ticks say (``StageTick.task``);
        # a stage that names none has the task of its own name.
        self.stage_tasks: dict[str, str] = {}
        self.started_at = started_at
        self.workers: dict[str, _Worker] = {}
        self.hist = [0] * (eta + 2)  # 0..eta, then > eta
        self.stale_sum = 0
        self.stale_max = 0
        self.stale_last_mean = 0.0
        self.drops: dict[str, int] = {}
        self.policy_version = -1
        self.learning = LearningView()
        self.store = StoreStats()
        self.store_hist: deque[tuple[float, float, int, int]] = deque()  # recv, t, put, get
        self.events = 0

    # ------------------------------------------------------------------ events
    def apply(self, event: MetricEvent, now: float) -> None:
        self.events += 1
        if isinstance(event, StageTick):
            if event.task:
                self.stage_tasks[event.stage] = event.task
            self._tick(event, now)
        elif isinstance(event, TrainStep):
            self._train(event)
        elif isinstance(event, SampleOutcome):
            if event.status == "dropped":
                reason = event.reason or "unspecified"
                self.drops[reason] = self.drops.get(reason, 0) + 1
        elif isinstance(event, StoreTick):
            self.store = event.stats
            self.store_hist.append(
                (now, event.t, event.stats.put_bytes_total, event.stats.get_bytes_total)
            )

    def _tick(self, ev: StageTick, now: float) -> None:
        key = ev.source or f"{ev.stage}/{ev.worker}"
        w = self.workers.get(key)
        if w is None:
            w = self.workers[key] = _Worker(stage=ev.stage)
        w.last_seen = now
        w.ticks.append((now, ev.processed, max(0.0, ev.busy_s) + max(0.0, ev.idle_s)))
        w.idle_s.append((now, max(0.0, ev.idle_s)))
        w.processed += ev.processed
        w.dropped += ev.dropped
        w.policy_version = ev.policy_version
        w.values.update(ev.values)

    def _train(self, ev: TrainStep) -> None:
        self.policy_version = max(self.policy_version, ev.policy_version)
        for s in ev.staleness:
            self.hist[min(max(s, 0), self.eta + 1)] += 1
            self.stale_max = max(self.stale_max, s)
        self.stale_sum += sum(ev.staleness)
        if ev.staleness:
            self.stale_last_mean = sum(ev.staleness) / len(ev.staleness)
        samples = self.learning.samples + ev.samples
        if ev.step >= self.learning.step:
            self.learning = LearningView(
                step=ev.step, samples=samples, reward_mean=ev.reward_mean,
                reward_std=ev.reward_std, reward_terms=dict(ev.reward_terms), loss=ev.loss,
                clip_frac=ev.clip_frac, approx_kl=ev.approx_kl, grad_norm=ev.grad_norm,
                publish_latency_s=ev.publish_latency_s,
            )
        else:  # a late, out-of-order step still counts its samples
            self.learning.samples = samples

    # ---------------------------------------------------------------- snapshot
    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        for w in self.workers.values():
            while w.ticks and w.ticks[0][0] < horizon:
                w.ticks.popleft()
            while w.idle_s and w.idle_s[0][0] < horizon:
                w.idle_s.popleft()
        while len(self.store_hist) > 2 and self.store_hist[0][0] < horizon:
            self.store_hist.popleft()

    def _stage_names(self) -> list[str]:
        seen = [w.stage for w in self.workers.values()] + list(self.expected)
        names = [s for s in STAGE_ORDER if s in seen]
        return names + sorted({s for s in seen if s not in STAGE_ORDER})

    def _stage(self, name: str, now: float) -> StageView:
        ws = [w for w in self.workers.values() if w.stage == name]
        rate, busy_idle, idle = 0.0, 0.0, 0.0
        for w in ws:
            n = sum(t[1] for t in w.ticks)
            span = sum(t[2] for t in w.ticks)
            # No busy/idle reported: fall back to the window length.
            rate += n / span if span > 0 else n / self.window_s
            busy_idle += span
            idle += sum(i[1] for i in w.idle_s)
        reported = [w.values["queue_depth"] for w in ws if "queue_depth" in w.values]
        task = self.store.tasks.get(self.stage_tasks.get(name, name))
        queue = int(sum(reported)) if reported else (task.ready if task else -1)
        return StageView(
            name=name,
            workers_alive=sum(1 for w in ws if now - w.last_seen <= self.alive_s),
            workers_expected=self.expected.get(name, 0),
            samples_per_s=rate,
            processed=sum(w.processed for w in ws),
            dropped=sum(w.dropped for w in ws),
            queue_depth=queue,
            idle_frac=idle / busy_idle if busy_idle > 0 else 0.0,
        )

    def _store_view(self) -> StoreView:
        put = get = 0.0
        if len(self.store_hist) >= 2:
            (_, t0, p0, g0), (_, t1, p1, g1) = self.store_hist[0], self.store_hist[-1]
            if t1 > t0:
                put, get = (p1 - p0) / (t1 - t0) / 1e6, (g1 - g0) / (t1 - t0) / 1e6
        s = self.store
        return StoreView(
            samples=s.samples, bytes_used=s.bytes_used, budget_bytes=s.budget_bytes,
            put_mb_s=put, get_mb_s=get, deleted_total=s.deleted_total, tasks=dict(s.tasks),
        )

    def _learning_view(self) -> LearningView:
        """The latest TrainStep; per-term rewards from it, or else from what reward
        workers report in their ticks (``values["reward/<term>"]``, mean over workers)."""
        view = msgspec.structs.replace(self.learning)
        if view.reward_terms:
            return view
        sums: dict[str, list[float]] = {}
        for w in self.workers.values():
            for k, v in w.values.items():
                if k.startswith("reward/") and k != "reward/total":
                    sums.setdefault(k[len("reward/") :], []).append(v)
        view.reward_terms = {k: sum(v) / len(v) for k, v in sorted(sums.items())}
        return view

    def snapshot(self, now: float, seq: int = 0, bus: BusView | None = None) -> Snapshot:
        self._expire(now)
        count = sum(self.hist)
        producers = {
            k: w.policy_version for k, w in sorted(self.workers.items()) if w.policy_version >= 0
        }
        bus = msgspec.structs.replace(bus) if bus is not None else BusView()
        bus.events = self.events
        bus.sender_dropped = int(sum(w.values.get("bus_dropped", 0) for w in self.workers.values()))
        return Snapshot(
            run_id=self.run_id, t=now, seq=seq, uptime_s=max(0.0, now - self.started_at),
            stages=[self._stage(n, now) for n in self._stage_names()],
            staleness=StalenessView(
                policy_version=self.policy_version, eta=self.eta, count=count,
                mean=self.stale_sum / count if count else 0.0, max=self.stale_max,
                last_mean=self.stale_last_mean, histogram=list(self.hist),
                drops=dict(self.drops), producer_versions=producers,
            ),
            learning=self._learning_view(),
            store=self._store_view(),
            bus=bus,
        )

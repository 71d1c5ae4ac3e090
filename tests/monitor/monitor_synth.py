"""Synthetic metric events, shaped like a real run's, for the monitor tests and the
tmux script. Round ``i`` is deterministic: tests can recompute what they sent."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from unirl_stream.api import StoreStats, TaskStats
from unirl_stream.events import MetricSink, SampleOutcome, StageTick, StoreTick, TrainStep

RUN_ID = "synth-run"
ETA = 2
WORKERS = {"rollout": 2, "reward": 1, "trainer": 1}
BATCH = 8


def round_events(i: int, run_id: str = RUN_ID, t: float = 0.0) -> list:
    """Events of round ``i`` (one trainer step, one tick per worker, one store tick)."""
    version = i // 2
    ev: list = []
    for stage, n in WORKERS.items():
        for w in range(n):
            ev.append(
                StageTick(
                    run_id=run_id, source=f"{stage}/{w}", t=t, stage=stage, worker=w,
                    processed=4 + w, dropped=1 if stage == "trainer" and i % 3 == 0 else 0,
                    busy_s=0.75, idle_s=0.25,
                    policy_version=max(0, version - w) if stage == "rollout" else -1,
                    task={"reward": "reward", "trainer": "train"}.get(stage, ""),
                    values={"queue_depth": 3.0} if stage == "rollout" else {},
                )
            )
    stale = [(i + k) % (ETA + 1) for k in range(BATCH)]
    ev.append(
        TrainStep(
            run_id=run_id, source="trainer/0", t=t, step=i, policy_version=version,
            samples=BATCH, loss=0.1 + 0.01 * i, clip_frac=0.05, approx_kl=1e-3 * (i + 1),
            grad_norm=0.5 + 0.1 * math.sin(i), reward_mean=0.3 + 0.02 * i, reward_std=0.1,
            reward_terms={"pickscore": 0.2 + 0.01 * i, "ocr": 0.5}, staleness=stale,
        )
    )
    if i % 3 == 0:
        ev.append(
            SampleOutcome(
                run_id=run_id, source="trainer/0", t=t, sample_id=f"quickstart:{i}@0::sample:0",
                prompt_id=f"quickstart:{i}", status="dropped", reason="stale",
                behavior_version=0, staleness=ETA + 1,
            )
        )
    ev.append(
        StoreTick(
            run_id=run_id, source="driver", t=1000.0 + i,  # store clock: 1 s per round
            stats=StoreStats(
                samples=20 + i, bytes_used=(20 + i) * 1_000_000, budget_bytes=200_000_000,
                tasks={"reward": TaskStats(ready=2, leased=1, consumed=10 * i),
                       "train": TaskStats(ready=5, leased=8, consumed=8 * i)},
                put_bytes_total=i * 5_000_000, get_bytes_total=i * 3_000_000,
                deleted_total=8 * i,
            ),
        )
    )
    return ev


def emit_round(sink: MetricSink, i: int, run_id: str = RUN_ID, t: float = 0.0) -> int:
    evs = round_events(i, run_id, t)
    for e in evs:
        sink.emit(e)
    return len(evs)


def sources() -> list[str]:
    return sorted({e.source for e in round_events(0)})


def emit_source(sink: MetricSink, source: str, rounds: range, dt: float, stop=None) -> int:
    """Send ``source``'s events of each round, one round every ``dt`` seconds."""
    import time

    sent = 0
    for i in rounds:
        if stop is not None and stop.is_set():
            break
        for e in round_events(i, t=time.time()):
            if e.source == source:
                sink.emit(e)
                sent += 1
        time.sleep(dt)
    return sent


def start_workers(address: str, rounds: range, dt: float, stop=None) -> list:
    """One thread + one ZmqSink per source, like stage workers on the bus."""
    import threading

    from unirl_stream.monitor.bus import ZmqSink

    threads = []
    for src in sources():
        sink = ZmqSink(address, RUN_ID, src)

        def work(sink=sink, src=src) -> None:
            emit_source(sink, src, rounds, dt, stop)
            sink.close()

        th = threading.Thread(target=work, daemon=True)
        th.start()
        threads.append(th)
    return threads


def wait_for(cond: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``cond`` (correctness waits, not timing assertions)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        time.sleep(0.02)

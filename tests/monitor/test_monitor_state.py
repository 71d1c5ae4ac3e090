"""Event folding (MetricsState), the sender-side sinks and StageMeter, without sockets
where possible; numbers are checked against hand-computed values."""

from __future__ import annotations

import json
import pickle

import msgspec
import pytest
from monitor_synth import BATCH, ETA, RUN_ID, WORKERS, emit_round, round_events

from unirl_stream.api import StoreStats, TaskStats
from unirl_stream.events import SampleOutcome, StageTick, StoreTick, TrainStep
from unirl_stream.monitor.aggregator import Aggregator
from unirl_stream.monitor.bus import (
    StageMeter,
    ZmqSink,
    decode_event,
    encode_event,
)
from unirl_stream.monitor.state import MetricsState


def tick(stage: str, w: int, n: int, busy: float, idle: float, v: int = -1, **values: float) -> StageTick:
    return StageTick(run_id="r", source=f"{stage}/{w}", t=0.0, stage=stage, worker=w,
                     processed=n, busy_s=busy, idle_s=idle, policy_version=v, values=values)


def test_rates_idle_alive_and_window_expiry() -> None:
    st = MetricsState("r", eta=1, window_s=10.0, alive_s=3.0, expected_workers={"rollout": 2})
    st.apply(tick("rollout", 0, 6, 1.5, 0.5), now=100.0)  # 3/s
    st.apply(tick("rollout", 0, 2, 0.5, 1.5), now=102.0)  # -> 8 in 4 s
    st.apply(tick("rollout", 1, 3, 1.0, 0.0), now=102.0)  # 3/s
    snap = st.snapshot(now=102.0)
    ro = snap.stage("rollout")
    assert ro is not None
    assert ro.samples_per_s == pytest.approx(8 / 4 + 3 / 1)
    assert ro.idle_frac == pytest.approx(2.0 / 5.0)
    assert (ro.workers_alive, ro.workers_expected, ro.processed) == (2, 2, 11)
    # 4 s later worker 0's first tick is still in the window, but nobody is alive
    later = st.snapshot(now=106.0).stage("rollout")
    assert later is not None and later.workers_alive == 0 and later.processed == 11
    # 20 s later the window is empty: no rate, totals kept
    gone = st.snapshot(now=125.0).stage("rollout")
    assert gone is not None and gone.samples_per_s == 0.0 and gone.processed == 11


def test_staleness_drops_learning_and_producers() -> None:
    st = MetricsState("r", eta=2)
    st.apply(tick("rollout", 0, 1, 1, 0, v=3), 0.0)
    st.apply(tick("rollout", 1, 1, 1, 0, v=2), 0.0)
    st.apply(TrainStep(run_id="r", source="trainer/0", t=0, step=0, policy_version=3, samples=4,
                       staleness=[0, 1, 2, 3], reward_mean=0.5, loss=0.2), 0.0)
    st.apply(TrainStep(run_id="r", source="trainer/0", t=0, step=1, policy_version=4, samples=2,
                       staleness=[1, 1], reward_mean=0.7, reward_terms={"ocr": 0.9}), 0.0)
    for reason in ("stale", "stale", "nan_reward"):
        st.apply(SampleOutcome(run_id="r", source="trainer/0", t=0, status="dropped",
                               reason=reason), 0.0)
    st.apply(SampleOutcome(run_id="r", source="trainer/0", t=0, status="trained"), 0.0)
    s = st.snapshot(now=1.0)
    assert s.staleness.policy_version == 4
    assert s.staleness.histogram == [1, 3, 1, 1]  # 0, 1, 2, >2
    assert s.staleness.count == 6 and s.staleness.max == 3
    assert s.staleness.mean == pytest.approx(8 / 6) and s.staleness.last_mean == 1.0
    assert s.staleness.drops == {"stale": 2, "nan_reward": 1}
    assert s.staleness.producer_versions == {"rollout/0": 3, "rollout/1": 2}
    assert (s.learning.step, s.learning.samples, s.learning.reward_mean) == (1, 6, 0.7)
    assert s.learning.reward_terms == {"ocr": 0.9}


def test_store_rates_and_queue_depth() -> None:
    st = MetricsState("r", eta=1, window_s=10.0)
    for i in range(3):
        stats = StoreStats(samples=i, bytes_used=10 * i, budget_bytes=100,
                           tasks={"reward": TaskStats(ready=4), "train": TaskStats(ready=7)},
                           put_bytes_total=2_000_000 * i, get_bytes_total=1_000_000 * i)
        st.apply(StoreTick(run_id="r", source="driver", t=10.0 + 2 * i, stats=stats), 10.0 + 2 * i)
    st.apply(tick("reward", 0, 1, 1, 0), 14.0)
    st.apply(msgspec.structs.replace(tick("trainer", 0, 1, 1, 0), task="train"), 14.0)
    st.apply(tick("rollout", 0, 1, 1, 0, queue_depth=5.0), 14.0)
    s = st.snapshot(now=14.0)
    assert s.store.put_mb_s == pytest.approx(1.0) and s.store.get_mb_s == pytest.approx(0.5)
    assert (s.store.bytes_used, s.store.budget_bytes, s.store.samples) == (20, 100, 2)
    depth = {x.name: x.queue_depth for x in s.stages}
    assert depth == {"rollout": 5, "reward": 4, "trainer": 7}
    assert [x.name for x in s.stages] == ["rollout", "reward", "trainer"]


def test_event_codec_round_trip_and_no_pickle() -> None:
    for ev in round_events(3):
        data = encode_event(ev)
        assert decode_event(data) == ev
        assert not data.startswith(b"\x80")  # not a pickle stream
    with pytest.raises(msgspec.ValidationError):
        decode_event(msgspec.msgpack.encode({"type": "nope", "run_id": "r"}))


def test_zmq_sink_never_blocks_and_counts_drops() -> None:
    # Nobody listens on this address: the queue fills to its HWM, the rest is dropped.
    sink = ZmqSink("tcp://127.0.0.1:9", RUN_ID, "rollout/0", hwm=5)
    for i in range(50):
        sink.emit(tick("rollout", 0, i, 0, 0))
    assert sink.sent + sink.dropped == 50
    assert sink.dropped >= 40
    clone = pickle.loads(pickle.dumps(sink))  # Ray hands sinks to actors by pickle
    assert (clone.address, clone.source, clone.sent, clone.dropped) == (sink.address, "rollout/0", 0, 0)
    sink.close()
    clone.close()


def test_stage_meter_ticks_busy_idle() -> None:
    now = [0.0]
    got: list = []

    class Collect:
        def emit(self, e) -> None:
            got.append(e)

        def close(self) -> None:
            pass

    meter = StageMeter(Collect(), "r", "reward", worker=1, tick_s=1.0, clock=lambda: now[0])
    for dt, n in [(0.3, 2), (0.2, 0), (0.3, 1)]:
        now[0] += dt
        meter.record(n, policy_version=2)
    assert got == []
    now[0] += 0.4
    meter.record(0, values={"queue_depth": 3})
    assert len(got) == 1
    t = got[0]
    assert (t.stage, t.worker, t.source, t.processed, t.policy_version) == ("reward", 1, "reward/1", 3, 2)
    assert t.busy_s == pytest.approx(0.6) and t.idle_s == pytest.approx(0.6)
    assert t.values == {"queue_depth": 3}


def test_aggregator_in_process_metrics_rows(tmp_path) -> None:
    agg = Aggregator(tmp_path, RUN_ID, eta=ETA, expected_workers=WORKERS)
    for i in range(4):
        emit_round(agg, i)
    snap = agg.refresh(write_row=True)
    agg.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in rows]
    assert kinds == ["train"] * 4 + ["pipeline", "pipeline"]
    assert all("t" in r for r in rows)
    assert [r["step"] for r in rows[:4]] == [0, 1, 2, 3]
    assert rows[3]["staleness_mean"] == pytest.approx(sum(round_events(3)[4].staleness) / BATCH)
    assert rows[4]["learning"]["samples"] == snap.learning.samples == 4 * BATCH
    assert rows[5]["finished"] is True and rows[4]["finished"] is False


def test_reward_terms_fall_back_to_reward_worker_ticks() -> None:
    st = MetricsState("r", eta=1)
    st.apply(TrainStep(run_id="r", source="trainer/0", t=0, step=0, reward_mean=0.5), 0.0)
    st.apply(tick("reward", 0, 8, 1, 0, **{"reward/total": 0.5, "reward/ocr": 0.2,
                                          "reward/clip": 0.6, "reward_seconds/ocr": 3.0}), 0.0)
    st.apply(tick("reward", 1, 8, 1, 0, **{"reward/ocr": 0.4}), 0.0)
    assert st.snapshot(1.0).learning.reward_terms == {"clip": 0.6, "ocr": pytest.approx(0.3)}
    # a trainer that reports its own batch's terms wins
    st.apply(TrainStep(run_id="r", source="trainer/0", t=0, step=1, reward_terms={"ocr": 0.9}), 0.0)
    assert st.snapshot(1.0).learning.reward_terms == {"ocr": 0.9}

"""A subscriber that stops reading must not slow the pipeline: every event still arrives
(no sender drops, none lost), the aggregator keeps publishing, and its drop counter
rises. Compared against the same run with no subscriber, by counts."""

from __future__ import annotations

import threading
import time

from monitor_synth import RUN_ID, round_events, wait_for

from unirl_stream.monitor.aggregator import Aggregator
from unirl_stream.monitor.bus import ZmqSink

ROUNDS = 300  # 300 rounds of 7-8 events, sent in bursts


def run_pipeline(tmp_path, stalled: bool) -> dict[str, float]:
    import zmq

    # Small socket buffers + fast publishing so a stalled reader fills up in well under a
    # second (with defaults it takes minutes: the kernel buffers megabytes).
    agg = Aggregator(tmp_path / ("stalled" if stalled else "free"), RUN_ID, eta=2,
                     publish_s=0.002, tick_s=10.0, pub_hwm=1, pub_sndbuf=2048).start()
    sub = None
    if stalled:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 1)
        sub.setsockopt(zmq.RCVBUF, 2048)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(agg.pub_address)
        wait_for(lambda: agg.latest.bus.subscribers == 1, what="the subscription")
        sub.recv()  # read one snapshot, then never again
        wait_for(lambda: agg.latest.bus.pub_dropped > 0, what="publisher drops")
    sink = ZmqSink(agg.address, RUN_ID, "trainer/0", hwm=2000)
    sent, attempts0 = 0, agg.bus.pub_sent + agg.bus.pub_dropped
    drops0 = agg.bus.pub_dropped
    t0 = time.perf_counter()
    for i in range(ROUNDS):
        for e in round_events(i):
            sink.emit(e)
            sent += 1
        time.sleep(0.002)  # a paced producer, like stage workers ticking
    elapsed = time.perf_counter() - t0
    wait_for(lambda: agg.snapshot().bus.events == sent, what="all events applied")
    snap = agg.snapshot()
    out = {"sent": sent, "sender_dropped": sink.dropped, "events": snap.bus.events,
           "publishes": agg.bus.pub_sent + agg.bus.pub_dropped - attempts0,
           "pub_dropped": agg.bus.pub_dropped - drops0, "steps": snap.learning.step + 1,
           "rate": sent / elapsed}
    sink.close()
    if sub is not None:
        sub.close(linger=0)
    agg.close()
    return out


def test_stalled_subscriber_does_not_slow_the_pipeline(tmp_path) -> None:
    free = run_pipeline(tmp_path, stalled=False)
    stalled = run_pipeline(tmp_path, stalled=True)
    print(f"event rate free {free['rate']:.0f}/s, stalled subscriber {stalled['rate']:.0f}/s")
    for run in (free, stalled):
        assert run["sender_dropped"] == 0
        assert run["events"] == run["sent"] == sum(len(round_events(i)) for i in range(ROUNDS))
        assert run["steps"] == ROUNDS
    assert free["pub_dropped"] == 0
    # the aggregator kept cycling while the subscriber was full, and counted every miss
    assert stalled["pub_dropped"] > 0
    assert stalled["publishes"] >= 10
    assert stalled["pub_dropped"] >= stalled["publishes"] - 5


def test_viewer_subscriber_conflates(tmp_path) -> None:
    """The bundled viewer keeps only the newest snapshot, so it never fills up."""
    from unirl_stream.monitor.viewer import Subscriber

    agg = Aggregator(tmp_path, RUN_ID, publish_s=0.01, pub_hwm=1, pub_sndbuf=2048).start()
    sub = Subscriber(agg.pub_address, RUN_ID)
    first = sub.recv(10)
    assert first is not None
    stop = threading.Event()
    wait_for(lambda: agg.latest.seq > first.seq + 50, what="50 more publishes")
    newest = sub.recv(10)
    assert newest is not None and newest.seq > first.seq + 40  # skipped, not queued
    stop.set()
    sub.close()
    agg.close()
    assert agg.bus.pub_dropped <= 3  # a conflating reader is never full for long

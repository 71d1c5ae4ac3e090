"""The metrics bus, sender side: how stage workers and the trainer ship metric events.

Events (``events.METRIC_EVENT``) are msgpack-encoded msgspec Structs on a ZeroMQ PUSH socket
connected to the driver's aggregator (``unirl_stream.monitor.aggregator``), which binds the
PULL end. Sending never blocks the caller: a full queue (bounded by the high-water mark,
e.g. while the driver is busy or gone) drops the event and counts the drop. Metrics are
advisory; the training data never travels here.

Also here: ``StageMeter``, which turns a worker's steps into one ``StageTick`` per
``tick_s`` (the stage runner reports through it).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from unirl_stream.events import METRIC_EVENT, MetricEvent, MetricSink, NullSink, StageTick

_ENCODER = msgspec.msgpack.Encoder()
_DECODER: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(METRIC_EVENT)


def encode_event(event: MetricEvent) -> bytes:
    return _ENCODER.encode(event)


def decode_event(data: bytes) -> MetricEvent:
    """Decode one bus frame; raises msgspec.DecodeError/ValidationError on a bad frame."""
    event: MetricEvent = _DECODER.decode(data)
    return event


class ZmqSink:
    """``events.MetricSink`` for a worker: PUSH to the aggregator, never blocking.

    The socket is created lazily in the process that first emits (and again after a
    fork), and the object pickles as its settings only, so it can be built in the driver
    and handed to Ray actors. ``dropped`` counts events not queued (HWM reached); the
    count rides along on the next ``StageTick`` as ``values["bus_dropped"]`` so the
    aggregator can show sender-side losses too.
    """

    def __init__(
        self, address: str, run_id: str, source: str, hwm: int = 10_000, linger_ms: int = 200
    ) -> None:
        self.address = address
        self.run_id = run_id
        self.source = source
        self.hwm = hwm
        self.linger_ms = linger_ms
        self.sent = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._sock: Any = None
        self._pid = -1
        self._closed = False

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("address", "run_id", "source", "hwm", "linger_ms")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def _socket(self) -> Any:
        if self._sock is None or self._pid != os.getpid():
            import zmq

            sock = zmq.Context.instance().socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, self.hwm)
            sock.setsockopt(zmq.LINGER, self.linger_ms)
            sock.connect(self.address)
            self._sock, self._pid = sock, os.getpid()
        return self._sock

    def emit(self, event: MetricEvent) -> None:
        import zmq

        with self._lock:
            if self._closed:
                self.dropped += 1
                return
            if self.dropped and isinstance(event, StageTick):
                values = {**event.values, "bus_dropped": float(self.dropped)}
                event = msgspec.structs.replace(event, values=values)
            try:
                self._socket().send(encode_event(event), zmq.NOBLOCK)
                self.sent += 1
            except zmq.Again:
                self.dropped += 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._sock is not None and self._pid == os.getpid():
                self._sock.close()
            self._sock = None


class StageMeter:
    """Accumulates one worker's steps and emits a ``StageTick`` every ``tick_s``.

    The runner calls ``record`` after each ``Stage.step`` (with the time it took and
    whether it did work) and ``close`` at the end; busy + idle seconds of a tick add up to
    the wall time it covers, which is what the aggregator divides by for samples/s.
    """

    def __init__(
        self,
        sink: MetricSink | None,
        run_id: str,
        stage: str,
        worker: int = 0,
        tick_s: float = 1.0,
        clock: Any = time.time,
        task: str = "",
    ) -> None:
        self.sink: MetricSink = sink if sink is not None else NullSink()
        self.run_id, self.stage, self.worker, self.tick_s = run_id, stage, worker, tick_s
        self.task = task  # the store task the stage claims from (the monitor's queue depth)
        self.clock = clock
        self.source = f"{stage}/{worker}"
        self._last = self._last_step = clock()
        self.policy_version = -1
        self._reset()

    def _reset(self) -> None:
        self.processed = 0
        self.dropped = 0
        self.busy_s = 0.0
        self.values: dict[str, float] = {}

    def record(
        self,
        processed: int,
        dropped: int = 0,
        policy_version: int | None = None,
        values: Mapping[str, float] | None = None,
    ) -> None:
        """One step's outcome; a step that processed nothing counts as idle time.
        ``policy_version`` (producers): the version held now; None keeps the last one.
        ``values`` are kept (latest wins) until the next tick, e.g. ``queue_depth``."""
        now = self.clock()
        elapsed = max(0.0, now - self._last_step)
        self._last_step = now
        if processed or dropped:
            self.busy_s += elapsed
        self.processed += processed
        self.dropped += dropped
        if policy_version is not None:
            self.policy_version = policy_version
        if values:
            self.values.update(values)
        if now - self._last >= self.tick_s:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        span = max(0.0, now - self._last)
        busy = min(self.busy_s, span)
        self.sink.emit(
            StageTick(
                run_id=self.run_id, source=self.source, t=now, stage=self.stage,
                worker=self.worker, processed=self.processed, dropped=self.dropped,
                busy_s=busy, idle_s=span - busy,
                policy_version=self.policy_version, task=self.task, values=dict(self.values),
            )
        )
        self._last = now
        self._reset()

    def close(self) -> None:
        self.flush()

"""The metrics bus, driver side: collect events, keep the Snapshot, write and republish it.

One ``Aggregator`` per run lives in the driver. A background thread owns a PULL socket
(stages' ``ZmqSink``s connect to ``address``) and an XPUB socket (viewers connect to
``pub_address``), both bound on ``bind_host`` (127.0.0.1 by default) on free ports. The
driver may also call ``emit`` directly. Every ``publish_s`` the thread builds a Snapshot
and publishes it; every ``tick_s`` it appends a ``"pipeline"`` row to ``metrics.jsonl``;
each TrainStep becomes a ``"train"`` row as it arrives.

Why XPUB with XPUB_NODROP instead of PUB: a PUB socket drops silently when a subscriber is
full, so nobody could count the drops. With NODROP a full subscriber makes our
non-blocking send fail at once (EAGAIN), which we count and move on; the pipeline never
waits. The bundled viewer subscribes with ZMQ_CONFLATE, so it never fills up.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import msgspec

from unirl_stream.events import MetricEvent, TrainStep
from unirl_stream.monitor.bus import ZmqSink, decode_event
from unirl_stream.monitor.snapshot import BusView, Snapshot, snapshot_row, snapshot_to_msgpack
from unirl_stream.monitor.state import MetricsState

MONITOR_FILE = "monitor.json"
METRICS_FILE = "metrics.jsonl"


class MonitorSink:
    """A driver-side sink: sees every event and every snapshot. Subclasses override what
    they need; the no-op base is also the null object (no ``if wandb:`` in loops)."""

    def emit(self, event: MetricEvent) -> None:
        return None

    def on_snapshot(self, snap: Snapshot) -> None:
        return None

    def close(self) -> None:
        return None


def train_row(ev: TrainStep) -> dict[str, Any]:
    row = {"kind": "train", **msgspec.to_builtins(ev)}
    row.pop("type", None)
    n = len(ev.staleness)
    row["staleness_mean"] = sum(ev.staleness) / n if n else 0.0
    row["staleness_max"] = max(ev.staleness) if n else 0
    return row


class Aggregator:
    """Collects metric events; see the module docstring. Also an ``events.MetricSink``."""

    def __init__(
        self,
        run_dir: str | Path,
        run_id: str,
        *,
        eta: int = 1,
        bind_host: str = "127.0.0.1",
        advertise_host: str | None = None,
        tick_s: float = 1.0,
        publish_s: float = 0.5,
        window_s: float = 10.0,
        alive_s: float | None = None,
        expected_workers: Mapping[str, int] | None = None,
        sinks: Iterable[MonitorSink] = (),
        pull_hwm: int = 100_000,
        pub_hwm: int = 8,
        pub_sndbuf: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.bind_host = bind_host
        self.advertise_host = advertise_host or _advertise(bind_host)
        self.tick_s, self.publish_s = tick_s, publish_s
        self.sinks = list(sinks)
        self.pull_hwm, self.pub_hwm, self.pub_sndbuf = pull_hwm, pub_hwm, pub_sndbuf
        self.clock = clock
        self.started_at = clock()
        self.state = MetricsState(
            run_id, eta=eta, window_s=window_s,
            alive_s=alive_s if alive_s is not None else max(5.0, 3 * tick_s),
            expected_workers=expected_workers,
            started_at=self.started_at,
        )
        self.bus = BusView()
        self.seq = 0
        self.address = ""  # PULL endpoint for ZmqSinks (set by start)
        self.pub_address = ""
        self.latest = self._snapshot_locked(self.started_at)
        self._lock = threading.RLock()  # state, metrics file, bus counters
        self._pub_lock = threading.Lock()  # the XPUB socket
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pull: Any = None
        self._pub: Any = None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._fh: IO[bytes] | None = (self.run_dir / METRICS_FILE).open("ab")

    # ------------------------------------------------------------------ public
    def start(self) -> Aggregator:
        """Bind the sockets, write ``monitor.json`` and start the thread."""
        import zmq

        ctx = zmq.Context.instance()
        self._pull = ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.RCVHWM, self.pull_hwm)
        self._pull.setsockopt(zmq.LINGER, 0)
        self.address = self._bind(self._pull)
        self._pub = ctx.socket(zmq.XPUB)
        self._pub.setsockopt(zmq.XPUB_NODROP, 1)
        self._pub.setsockopt(zmq.XPUB_VERBOSER, 1)  # see every (un)subscription: a count
        self._pub.setsockopt(zmq.SNDHWM, self.pub_hwm)
        if self.pub_sndbuf > 0:
            self._pub.setsockopt(zmq.SNDBUF, self.pub_sndbuf)
        self._pub.setsockopt(zmq.LINGER, 500)
        self.pub_address = self._bind(self._pub)
        self._write_monitor_file("running")
        self._thread = threading.Thread(target=self._loop, name="unirl-metrics", daemon=True)
        self._thread.start()
        return self

    def sink_for(self, source: str, hwm: int = 10_000) -> ZmqSink:
        """The sink a stage worker uses (picklable: hand it to a Ray actor)."""
        if not self.address:
            raise RuntimeError("Aggregator.sink_for: call start() first (no bus address yet)")
        return ZmqSink(self.address, self.run_id, source, hwm=hwm)

    def emit(self, event: MetricEvent) -> None:
        """In-process events (driver, tests): applied at once, same path as the socket."""
        with self._lock:
            self._apply(event)

    def snapshot(self) -> Snapshot:
        """A fresh snapshot now (does not publish); after ``close``, the final one."""
        with self._lock:
            if self._fh is None:
                return self.latest
            return self._snapshot_locked(self.clock())

    def refresh(self, write_row: bool = False) -> Snapshot:
        """Build, publish and hand to sinks a snapshot (what the thread does every
        ``publish_s``); ``write_row`` also appends it to metrics.jsonl."""
        with self._lock:
            self.seq += 1
            snap = self._snapshot_locked(self.clock())
            self.latest = snap
            if write_row:
                self._write(snapshot_row(snap))
            self._call_sinks(lambda s: s.on_snapshot(snap))
        self._publish(snap)
        return snap

    def close(self) -> None:
        """Stop the thread, publish and write a final ``finished`` snapshot, close sinks."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            if self._fh is None:
                return
            self.seq += 1
            snap = self._snapshot_locked(self.clock())
            snap.finished = True
            self.latest = snap
            self._write(snapshot_row(snap))
            self._call_sinks(lambda s: s.on_snapshot(snap))
            self._call_sinks(lambda s: s.close())
            self._fh.close()
            self._fh = None
        self._publish(snap)
        if self._pub is not None:
            self._write_monitor_file("finished")
            with self._pub_lock:
                self._pub.close()
                self._pull.close()
                self._pub = self._pull = None

    def __enter__(self) -> Aggregator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- internals
    def _bind(self, sock: Any) -> str:
        import zmq

        sock.bind(f"tcp://{self.bind_host}:*")
        port = sock.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1]
        return f"tcp://{self.advertise_host}:{port}"

    def _apply(self, event: MetricEvent) -> None:
        self.state.apply(event, self.clock())
        if isinstance(event, TrainStep):
            self._write(train_row(event))
        self._call_sinks(lambda s: s.emit(event))

    def _snapshot_locked(self, now: float) -> Snapshot:
        return self.state.snapshot(now, seq=self.seq, bus=self.bus)

    def _call_sinks(self, fn: Callable[[MonitorSink], None]) -> None:
        for sink in self.sinks:
            try:
                fn(sink)
            except Exception:  # a sink failing (wandb offline disk full...) is counted
                self.bus.sink_errors += 1

    def _write(self, row: dict[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(msgspec.json.encode(row) + b"\n")
            self._fh.flush()

    def _publish(self, snap: Snapshot) -> None:
        import zmq

        data = snapshot_to_msgpack(snap)
        with self._pub_lock:
            if self._pub is None:
                return
            try:
                self._pub.send(data, zmq.NOBLOCK)
                self.bus.pub_sent += 1
            except zmq.Again:  # a subscriber is full: drop this snapshot, never wait
                self.bus.pub_dropped += 1

    def _drain_pull(self, limit: int = 10_000) -> None:
        import zmq

        for _ in range(limit):
            try:
                data = self._pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                event = decode_event(data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                with self._lock:
                    self.bus.decode_errors += 1
                continue
            with self._lock:
                self._apply(event)

    def _drain_subscriptions(self) -> None:
        import zmq

        while True:
            with self._pub_lock:
                try:
                    msg = self._pub.recv(zmq.NOBLOCK)
                except zmq.Again:
                    return
            with self._lock:
                if msg[:1] == b"\x01":
                    self.bus.subscribers += 1
                elif msg[:1] == b"\x00":
                    self.bus.subscribers = max(0, self.bus.subscribers - 1)

    def _loop(self) -> None:
        import zmq

        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        poller.register(self._pub, zmq.POLLIN)
        next_pub = self.clock() + self.publish_s
        next_row = self.clock() + self.tick_s
        while not self._stop.is_set():
            wait = min(next_pub, next_row) - self.clock()
            ready = dict(poller.poll(max(0, min(100, int(wait * 1000)))))
            if self._pull in ready:
                self._drain_pull()
            if self._pub in ready:
                self._drain_subscriptions()
            now = self.clock()
            if now >= next_pub or now >= next_row:
                self.refresh(write_row=now >= next_row)
                # after a stall, start afresh rather than fire a burst of catch-up refreshes
                if now >= next_row:
                    next_row = max(next_row + self.tick_s, now + self.tick_s / 2)
                if now >= next_pub:
                    next_pub = max(next_pub + self.publish_s, now + self.publish_s / 2)
        self._drain_pull()  # events already queued still count

    def _write_monitor_file(self, state: str) -> None:
        info = {
            "run_id": self.run_id, "pub_address": self.pub_address, "address": self.address,
            "pid": os.getpid(), "host": socket.gethostname(), "state": state,
            "started_at": self.started_at, "metrics": METRICS_FILE,
            "publish_s": self.publish_s, "tick_s": self.tick_s,
        }
        tmp = self.run_dir / (MONITOR_FILE + ".tmp")
        tmp.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        tmp.replace(self.run_dir / MONITOR_FILE)


def _advertise(bind_host: str) -> str:
    """The host other processes connect to: the bind host, or, when bound to all
    interfaces (multi-node Ray runs set ``[logging] bind_host = "0.0.0.0"``), this node's
    address as Ray sees it, else the address of the default route's interface (a UDP
    "connect" sends nothing; it only asks the routing table). ``gethostbyname`` comes
    last because Debian maps the host name to 127.0.1.1."""
    if bind_host not in ("0.0.0.0", "*", ""):
        return bind_host
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return str(ray.util.get_node_ip_address())
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            return str(s.getsockname()[0])
    except OSError:
        pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"

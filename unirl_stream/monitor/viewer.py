"""``unirl-stream monitor RUN_DIR``: attach to a running run, or replay a finished one.

A running run has ``RUN_DIR/monitor.json`` naming the aggregator's PUB address; we
subscribe with ZMQ_CONFLATE (only the latest snapshot is kept, so a slow terminal never
backs up the publisher) and show the same panel as ``run``. When nobody publishes (the
run finished or died) we replay ``metrics.jsonl``: the last snapshot, a summary table and
sparklines of reward, throughput and staleness over time.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table

from unirl_stream.api import UserInputError
from unirl_stream.monitor.aggregator import MONITOR_FILE
from unirl_stream.monitor.history import History, read_history
from unirl_stream.monitor.panel import plain_line, render, sparkline
from unirl_stream.monitor.snapshot import Snapshot, snapshot_from_msgpack, snapshot_json


class Subscriber:
    """Latest-snapshot subscriber to an aggregator's PUB address."""

    def __init__(self, address: str, run_id: str = "") -> None:
        import zmq

        self.run_id = run_id
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.CONFLATE, 1)  # keep only the newest snapshot
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(address)

    def recv(self, timeout_s: float) -> Snapshot | None:
        """The next snapshot of our run, or None after ``timeout_s`` without one."""
        import zmq

        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                return None
            try:
                snap = snapshot_from_msgpack(self.sock.recv())
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # not one of our snapshots (another program on a reused port)
            if not self.run_id or snap.run_id == self.run_id:
                return snap
        return None

    def close(self) -> None:
        self.sock.close()


def read_monitor_file(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / MONITOR_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _publisher_may_live(info: dict[str, Any]) -> bool:
    if info.get("state") != "running" or not info.get("pub_address"):
        return False
    if info.get("host") != socket.gethostname():
        return True  # another node: only the socket can tell
    try:
        os.kill(int(info.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def monitor_command(
    run_dir: Path,
    once: bool = False,
    as_json: bool = False,
    plot: Path | None = None,
    console: Console | None = None,
    *,
    attach_timeout_s: float | None = None,
    idle_timeout_s: float = 15.0,
    log_every_s: float = 10.0,
) -> int:
    """Body of ``unirl-stream monitor``; returns the exit code. Raises UserInputError for
    a directory that is not a run directory."""
    console = console or Console()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserInputError(f"{run_dir}: no such run directory (give the folder `run` made)")
    if plot is not None:
        from unirl_stream.monitor.plot import plot_run

        out = plot_run(run_dir, plot)
        console.print(f"wrote {out}", markup=False, highlight=False)
        return 0
    info = read_monitor_file(run_dir)
    if info is not None and _publisher_may_live(info):
        wait = attach_timeout_s or max(3.0, 4 * float(info.get("publish_s", 0.5)))
        sub = Subscriber(str(info["pub_address"]), str(info.get("run_id", "")))
        try:
            first = sub.recv(wait)
            if first is not None:
                return _live(sub, first, console, once, as_json, idle_timeout_s, log_every_s)
        finally:
            sub.close()
    return _offline(run_dir, console, as_json)


def _live(
    sub: Subscriber, snap: Snapshot, console: Console, once: bool, as_json: bool,
    idle_timeout_s: float, log_every_s: float,
) -> int:
    if once:
        if as_json:
            console.out(snapshot_json(snap), highlight=False)
        else:
            console.print(render(snap))
        return 0
    try:
        if console.is_terminal and not as_json:
            _follow_panel(sub, snap, console, idle_timeout_s)
        else:
            _follow_lines(sub, snap, console, as_json, idle_timeout_s, log_every_s)
    except KeyboardInterrupt:
        pass
    return 0


def _follow_panel(sub: Subscriber, snap: Snapshot, console: Console, idle_s: float) -> None:
    from rich.live import Live

    with Live(render(snap), console=console, auto_refresh=False) as live:
        while not snap.finished:
            nxt = sub.recv(idle_s)
            if nxt is None:
                console.print(f"[yellow]no snapshot for {idle_s:.0f}s: the run stopped publishing[/]")
                return
            snap = nxt
            live.update(render(snap), refresh=True)


def _follow_lines(
    sub: Subscriber, snap: Snapshot, console: Console, as_json: bool, idle_s: float,
    every_s: float,
) -> None:
    last = 0.0
    while True:
        now = time.monotonic()
        if as_json:
            console.out(snapshot_json(snap), highlight=False)
        elif snap.finished or now - last >= every_s:
            console.out(plain_line(snap), highlight=False)
            last = now
        if snap.finished:
            return
        nxt = sub.recv(idle_s)
        if nxt is None:
            return
        snap = nxt


# ---------------------------------------------------------------------- offline
def _offline(run_dir: Path, console: Console, as_json: bool) -> int:
    hist = read_history(run_dir)
    snap = hist.last
    if as_json:
        console.out(snapshot_json(snap or Snapshot()), highlight=False)
        return 0
    if snap is None:
        console.print(f"{run_dir}: no pipeline snapshot recorded yet ({len(hist.train)} train rows)")
        return 0
    state = "finished" if snap.finished else "not running (no live publisher)"
    title = f"unirl-stream · run {escape(snap.run_id)} · replay · {state} · {snap.uptime_s:.0f}s"
    console.print(Group(render(snap, title=title), summary_table(hist, snap), sparklines(hist)))
    return 0


def summary_table(hist: History, snap: Snapshot) -> Table:
    t = Table(title="summary", title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    rewards = hist.series("reward_mean")
    t.add_row("duration", f"{snap.uptime_s:.1f} s")
    t.add_row("train steps", f"{len(hist.train)} (last step {snap.learning.step})")
    t.add_row("trained samples", str(snap.learning.samples))
    t.add_row("policy version", str(snap.staleness.policy_version))
    if rewards:
        t.add_row("reward", f"first {rewards[0]:.4f}  last {rewards[-1]:.4f}  best {max(rewards):.4f}")
    for st in snap.stages:
        mean = st.processed / snap.uptime_s if snap.uptime_s > 0 else 0.0
        _, rates = hist.throughput(st.name)
        peak = max(rates) if rates else 0.0
        t.add_row(escape(st.name), f"{st.processed} samples, mean {mean:.2f}/s, peak {peak:.2f}/s")
    s = snap.staleness
    t.add_row("staleness", f"mean {s.mean:.2f}  max {s.max}  (eta {s.eta})")
    drops = " ".join(f"{escape(k)}={v}" for k, v in s.drops.items())
    t.add_row("dropped", f"{sum(s.drops.values())} {drops}")
    b = snap.bus
    t.add_row("bus", f"events {b.events}, pub drops {b.pub_dropped}, sender drops {b.sender_dropped}")
    return t


def sparklines(hist: History, width: int = 60) -> RenderableType:
    t = Table(title="over time", title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_column(justify="right", style="dim")
    rows: list[tuple[str, list[float]]] = [
        ("reward", hist.series("reward_mean")),
        ("loss", hist.series("loss")),
        ("staleness", hist.series("staleness_mean")),
    ]
    rows += [(f"{n} samples/s", hist.throughput(n)[1]) for n in hist.stage_names()]
    for name, vals in rows:
        vals = [v for v in vals if v == v]
        rng = f"{min(vals):.3g}..{max(vals):.3g}" if vals else "no data"
        t.add_row(escape(name), sparkline(vals, width), rng)
    return t

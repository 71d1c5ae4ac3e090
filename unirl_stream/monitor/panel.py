"""The live panel (rich) and its plain one-line fallback.

``render(snapshot)`` builds the panel; ``LiveView`` refreshes it about twice a second
while a run goes on, or, when stdout is not a terminal or live display is off, prints
``plain_line(snapshot)`` every ``log_every_s`` seconds instead (logs stay greppable).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from unirl_stream.monitor.snapshot import Snapshot

BARS = " ▁▂▃▄▅▆▇█"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def sparkline(values: list[float], width: int = 40) -> str:
    """Unicode bars scaled to min..max; longer series are averaged into ``width`` bins
    so the whole run fits."""
    vals = [v for v in values if v == v]  # drop NaN
    if len(vals) > width:
        n = len(vals)
        bins = [vals[i * n // width : (i + 1) * n // width] for i in range(width)]
        vals = [sum(b) / len(b) for b in bins]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = hi - lo
    return "".join(BARS[1 + int((v - lo) / span * 7)] if span else BARS[4] for v in vals)


def _stages(s: Snapshot) -> Table:
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
    for col in ("stage", "workers", "samples/s", "processed", "queue", "idle", "dropped"):
        t.add_column(col, justify="left" if col == "stage" else "right", no_wrap=True)
    for st in s.stages:
        workers = f"{st.workers_alive}/{st.workers_expected}" if st.workers_expected else str(
            st.workers_alive
        )
        queue = str(st.queue_depth) if st.queue_depth >= 0 else "n/a"
        t.add_row(
            escape(st.name), workers, f"{st.samples_per_s:.2f}", str(st.processed), queue,
            f"{st.idle_frac:.0%}", str(st.dropped),
        )
    return t


def _histogram(hist: list[int], eta: int) -> Text:
    text = Text("histogram ")
    top = max(hist) if hist and max(hist) > 0 else 1
    for i, n in enumerate(hist):
        label = str(i) if i <= eta else f">{eta}"
        bar = BARS[min(8, 1 + int(n / top * 7))] if n else ""
        text.append(f"{label}:", style="dim")
        text.append(f"{bar}{n} ", style="bold red" if i > eta and n else "")
    return text


def _sections(s: Snapshot) -> Table:
    """Staleness, learning, store and bus as labelled lines: fits 80x24 terminals."""
    st, ln, sv, b = s.staleness, s.learning, s.store, s.bus
    t = Table.grid(padding=(0, 1))
    t.add_column(style="bold cyan", no_wrap=True)
    t.add_column()
    t.add_row("staleness", f"policy version {st.policy_version} · mean {st.mean:.2f} · "
              f"max {st.max} · last {st.last_mean:.2f} · eta {st.eta} · n {st.count}")
    drops = " ".join(f"{escape(k)} {v}" for k, v in sorted(st.drops.items())) or "0"
    t.add_row("", _histogram(st.histogram, st.eta).append(f"· drops {drops}"))
    held = " ".join(
        f"{escape(k)} v{v} (lag {max(0, st.policy_version - v)})"
        for k, v in st.producer_versions.items()
    ) or "n/a"
    t.add_row("", f"producers hold {held}")
    t.add_row("learning", f"step {ln.step} · {ln.samples} trained · "
              f"reward {ln.reward_mean:.4f} ± {ln.reward_std:.4f}")
    if ln.reward_terms:
        terms = " · ".join(f"{escape(k)} {v:.4f}" for k, v in sorted(ln.reward_terms.items()))
        t.add_row("", f"terms {terms}")
    t.add_row("", f"loss {ln.loss:.4g} · clip frac {ln.clip_frac:.3f} · "
              f"approx kl {ln.approx_kl:.3g} · grad norm {ln.grad_norm:.3g}")
    pct = f" ({sv.bytes_used / sv.budget_bytes:.0%})" if sv.budget_bytes else ""
    t.add_row("store", f"used {fmt_bytes(sv.bytes_used)} / {fmt_bytes(sv.budget_bytes)}{pct} · "
              f"{sv.samples} samples · deleted {sv.deleted_total}")
    tasks = " · ".join(f"{escape(k)} {v.ready}/{v.leased}/{v.consumed}"
                       for k, v in sorted(sv.tasks.items()))
    t.add_row("", f"put / get {sv.put_mb_s:.2f} / {sv.get_mb_s:.2f} MB/s"
              + (f" · tasks ready/leased/done {tasks}" if tasks else ""))
    t.add_row("bus", f"events {b.events} · pub drops {b.pub_dropped} · "
              f"sender drops {b.sender_dropped} · subscribers {b.subscribers}")
    return t


def render(s: Snapshot, title: str | None = None) -> RenderableType:
    state = "finished" if s.finished else "running"
    head = title or (
        f"unirl-stream · run {escape(s.run_id)} · {state} · {s.uptime_s:.0f}s · #{s.seq}"
    )
    return Panel(Group(_stages(s), _sections(s)), title=head, title_align="left", expand=False)


def plain_line(s: Snapshot) -> str:
    stages = " ".join(
        f"{st.name}={st.samples_per_s:.2f}/s(q{st.queue_depth},idle{st.idle_frac:.0%},"
        f"w{st.workers_alive})"
        for st in s.stages
    )
    st, ln, sv = s.staleness, s.learning, s.store
    return (
        f"[{s.run_id} {s.uptime_s:.0f}s] v={st.policy_version} step={ln.step} "
        f"trained={ln.samples} {stages} stale(mean={st.mean:.2f},max={st.max},"
        f"drops={sum(st.drops.values())}) reward={ln.reward_mean:.4f}±{ln.reward_std:.4f} "
        f"loss={ln.loss:.4g} clip={ln.clip_frac:.3f} kl={ln.approx_kl:.3g} "
        f"gnorm={ln.grad_norm:.3g} store={fmt_bytes(sv.bytes_used)}/{fmt_bytes(sv.budget_bytes)} "
        f"put={sv.put_mb_s:.1f}MB/s get={sv.get_mb_s:.1f}MB/s"
    )


class LiveView:
    """Shows ``snapshot_fn()`` while a run goes on. Use as a context manager, or call
    ``start()``/``stop()``. ``live`` is honoured only when the console is a terminal."""

    def __init__(
        self,
        snapshot_fn: Callable[[], Snapshot],
        console: Console | None = None,
        live: bool = True,
        log_every_s: float = 10.0,
        refresh_per_second: float = 2.0,
    ) -> None:
        self.snapshot_fn = snapshot_fn
        self.console = console or Console()
        self.live = live and self.console.is_terminal
        self.log_every_s = log_every_s
        self.refresh_per_second = refresh_per_second
        self._live: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def renderable(self) -> RenderableType:
        return render(self.snapshot_fn())

    def start(self) -> LiveView:
        if self.live:
            from rich.live import Live

            self._live = Live(
                console=self.console, get_renderable=self.renderable,
                refresh_per_second=self.refresh_per_second, redirect_stderr=False,
            )
            self._live.start()
        else:
            self._thread = threading.Thread(target=self._log_loop, name="unirl-log", daemon=True)
            self._thread.start()
        return self

    def _log_loop(self) -> None:
        while not self._stop.wait(self.log_every_s):
            self.console.print(plain_line(self.snapshot_fn()), markup=False, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        """Stop refreshing and leave the last state on screen (or as a last log line)."""
        self._stop.set()
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
            self.console.print(plain_line(self.snapshot_fn()), markup=False, highlight=False, soft_wrap=True)

    def __enter__(self) -> LiveView:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

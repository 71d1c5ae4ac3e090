"""Sample media a run writes for people to look at: ``RUN_DIR/media/v{version}/``.

Every ``[logging] media_every`` policy versions the reward stage hands the best, median
and worst sample (by reward) of each group it completed to a ``MediaWriter``. A background
thread encodes them (PNG for images; for videos an animated WebP, which Pillow writes
without system libraries, plus a PNG poster frame), keeps ``media/`` under
``media_max_mb`` by thinning old versions, writes the files, appends one row per sample to
``media/index.jsonl`` and announces each sample on the metrics bus (``events.MediaSample``)
for the tracking sinks (TensorBoard, wandb).

The stage never waits for the disk: ``offer`` puts on a bounded queue and, when it is
full (a slow disk), drops the samples and counts them (``dropped``).
"""

from __future__ import annotations

import fcntl
import io
import json
import queue
import re
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from unirl_stream.events import MediaSample, MetricSink, NullSink

MEDIA_DIR = "media"
INDEX_FILE = "index.jsonl"
RANKS = ("best", "median", "worst")
_FRAME_MS = 125  # 8 frames per second: slow enough to see a 5-frame clip move


@dataclass
class MediaItem:
    """One sample to write; ``frames`` is a uint8 numpy array [F, H, W, 3] (a copy: the
    store may reuse its buffer once the sample is trained)."""

    sample_id: str
    group: str
    prompt: str
    version: int
    rank: str
    reward: float
    terms: dict[str, float]
    advantage: float
    staleness: int
    frames: Any = field(repr=False)


def pick(rewards: Sequence[float]) -> list[tuple[int, str]]:
    """(index, rank) of the best, median and worst reward; each index once (a group of
    two gives best and worst, a group of one only best)."""
    order = sorted(range(len(rewards)), key=lambda i: rewards[i], reverse=True)
    if not order:
        return []
    chosen: dict[str, int] = {}
    for rank, i in (("best", order[0]), ("worst", order[-1]), ("median", order[len(order) // 2])):
        if i not in chosen.values():  # extremes first: a pair is best and worst
            chosen[rank] = i
    return [(chosen[r], r) for r in RANKS if r in chosen]


def encode(frames: Any) -> tuple[bytes, bytes | None]:
    """(poster PNG, animated WebP or None for a single image) of uint8 [F, H, W, 3]."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    poster = io.BytesIO()
    images[len(images) // 2].save(poster, format="PNG")
    if len(images) == 1:
        return poster.getvalue(), None
    anim = io.BytesIO()
    images[0].save(anim, format="WEBP", save_all=True, append_images=images[1:],
                   duration=_FRAME_MS, loop=0, quality=85)
    return poster.getvalue(), anim.getvalue()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def version_dir(version: int) -> str:
    return f"v{version:06d}"


class MediaWriter:
    """Writes ``MediaItem``s from a background thread; see the module docstring."""

    def __init__(self, run_dir: Path, every: int, max_mb: float, sink: MetricSink | None = None,
                 run_id: str = "", source: str = "", queue_size: int = 4) -> None:
        self.root = Path(run_dir) / MEDIA_DIR
        self.log_dir = Path(run_dir) / "logs"  # counters live outside the bounded media/
        self.every, self.budget = every, int(max_mb * 1e6)
        self.sink: MetricSink = sink if sink is not None else NullSink()
        self.run_id, self.source = run_id, source
        self.written = self.dropped = self.thinned = 0
        self._queue: queue.Queue[list[MediaItem] | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None

    def due(self, version: int) -> bool:
        return self.every > 0 and version % self.every == 0

    def offer(self, items: list[MediaItem]) -> bool:
        """Queue one group's items for writing; never blocks. False: dropped (queue full)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="unirl-media", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(items)
            return True
        except queue.Full:
            self.dropped += len(items)
            return False

    def counters(self) -> dict[str, float]:
        return {"media/written": float(self.written), "media/dropped": float(self.dropped),
                "media/thinned": float(self.thinned)}

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to ``timeout``), stop the thread, and leave the counters
        in ``logs/media-<source>.json`` (the run's summary adds them up)."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        self._thread = None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / f"media-{_safe(self.source) or 'writer'}.json").write_text(
            json.dumps(self.counters()), encoding="utf-8")

    # ------------------------------------------------------------------ thread
    def _loop(self) -> None:
        while (items := self._queue.get()) is not None:
            for item in items:
                self._write(item)

    def _write(self, item: MediaItem) -> None:
        poster, anim = encode(item.frames)
        size = len(poster) + len(anim or b"") + 1024  # + the index row, generously
        if not self._make_room(size, keep=version_dir(item.version)):
            self.dropped += 1
            return
        folder = self.root / version_dir(item.version)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{_safe(item.group)}_{item.rank}"
        (folder / f"{stem}.png").write_bytes(poster)
        anim_rel = None
        if anim is not None:
            (folder / f"{stem}.webp").write_bytes(anim)
            anim_rel = f"{MEDIA_DIR}/{folder.name}/{stem}.webp"
        event = MediaSample(
            run_id=self.run_id, source=self.source, t=time.time(), sample_id=item.sample_id,
            group=item.group, prompt=item.prompt, version=item.version, rank=item.rank,
            reward=item.reward, terms=item.terms, advantage=item.advantage,
            staleness=item.staleness, poster=f"{MEDIA_DIR}/{folder.name}/{stem}.png",
            anim=anim_rel, frames=int(item.frames.shape[0]))
        row = {k: v for k, v in msgspec.to_builtins(event).items()
               if k not in ("type", "run_id", "source")}
        with self._locked():  # several reward workers share the index
            with (self.root / INDEX_FILE).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        self.written += 1
        self.sink.emit(event)

    def _make_room(self, size: int, keep: str) -> bool:
        """Delete old version folders until ``size`` more bytes fit under the budget.

        Thinning order: the second-oldest version first (so the first version, the
        baseline a reader compares against, stays while three or more remain), then the
        oldest; never ``keep`` (the version being written). False: it cannot fit."""
        while self._used() + size > self.budget:
            versions = sorted(p.name for p in self.root.glob("v*") if p.is_dir() and p.name != keep)
            if not versions:
                return False
            victim = versions[1] if len(versions) >= 2 else versions[0]
            shutil.rmtree(self.root / victim, ignore_errors=True)
            self._drop_rows(f"{MEDIA_DIR}/{victim}/")
            self.thinned += 1
        return True

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _drop_rows(self, prefix: str) -> None:
        """Remove a thinned version's rows from the index (it counts against the budget too)."""
        index = self.root / INDEX_FILE
        with self._locked():
            if not index.is_file():
                return
            keep = [line for line in index.read_text(encoding="utf-8").splitlines(keepends=True)
                    if f'"poster": "{prefix}' not in line]
            tmp = index.with_suffix(".tmp")
            tmp.write_text("".join(keep), encoding="utf-8")
            tmp.replace(index)

    def _used(self) -> int:
        if not self.root.is_dir():
            return 0
        total = 0
        for p in self.root.rglob("*"):
            try:
                total += p.stat().st_size if p.is_file() else 0
            except FileNotFoundError:  # another reward worker is thinning the same folder
                pass
        return total

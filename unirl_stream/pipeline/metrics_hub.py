"""Where the driver's metric events go (placeholder until the ZeroMQ bus lands)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import msgspec

from unirl_stream.api import MetricEvent, MetricSink, NullSink, StoreTick
from unirl_stream.recipe import Recipe


class _NullFactory:
    def __call__(self, source: str) -> MetricSink:
        return NullSink()


class MetricsHub:
    def __init__(self, run_dir: Path, run_id: str) -> None:
        self._lock = threading.Lock()
        self._file = open(Path(run_dir) / "metrics.jsonl", "a", buffering=1, encoding="utf-8")
        self.run_id = run_id

    @classmethod
    def start(cls, run_dir: Path, recipe: Recipe, run_id: str, live: bool) -> MetricsHub:
        return cls(run_dir, run_id)

    def emit(self, event: MetricEvent) -> None:
        if isinstance(event, StoreTick):
            return
        with self._lock:
            self._file.write(msgspec.json.encode(event).decode() + "\n")

    def local_sink(self) -> MetricSink:
        return self  # type: ignore[return-value]

    def sink_factory(self) -> Any:
        return _NullFactory()

    def close(self) -> None:
        self._file.close()

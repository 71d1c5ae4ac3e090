"""Reading a run's ``metrics.jsonl`` back: train rows, snapshots, and the series the
offline viewer and the plot draw. Tolerates a half-written last line (a live run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from unirl_stream.api import UserInputError
from unirl_stream.monitor.aggregator import METRICS_FILE
from unirl_stream.monitor.snapshot import Snapshot, snapshot_from_row


@dataclass
class History:
    train: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    bad_lines: int = 0

    @property
    def last(self) -> Snapshot | None:
        return self.snapshots[-1] if self.snapshots else None

    def stage_names(self) -> list[str]:
        names: list[str] = []
        for snap in self.snapshots:
            names += [s.name for s in snap.stages if s.name not in names]
        return names

    def throughput(self, stage: str) -> tuple[list[float], list[float]]:
        """(uptime seconds, samples/s) of one stage over the run."""
        xs, ys = [], []
        for snap in self.snapshots:
            st = snap.stage(stage)
            if st is not None:
                xs.append(snap.uptime_s)
                ys.append(st.samples_per_s)
        return xs, ys

    def series(self, key: str) -> list[float]:
        return [float(r.get(key, float("nan"))) for r in self.train]

    def train_times(self) -> list[float]:
        t0 = self.start_time()
        return [float(r.get("t", t0)) - t0 for r in self.train]

    def start_time(self) -> float:
        if self.snapshots:
            return self.snapshots[0].t - self.snapshots[0].uptime_s
        return float(self.train[0].get("t", 0.0)) if self.train else 0.0


def read_history(run_dir: str | Path) -> History:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise UserInputError(
            f"{path}: no metrics file; is {run_dir} a run directory "
            "(made by `unirl-stream run`), and has the run started?"
        )
    hist = History()
    with path.open("rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                row = msgspec.json.decode(line)
                kind = row.get("kind") if isinstance(row, dict) else None
                if kind == "train":
                    hist.train.append(row)
                elif kind == "pipeline":
                    hist.snapshots.append(snapshot_from_row(row))
            except (msgspec.DecodeError, msgspec.ValidationError):
                hist.bad_lines += 1
    return hist

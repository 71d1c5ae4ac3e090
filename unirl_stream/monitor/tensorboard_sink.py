"""TensorBoard event files under ``RUN_DIR/tensorboard`` (``[logging] tensorboard = true``).

Fed like every driver-side sink (``aggregator.MonitorSink``): each ``TrainStep`` gives
scalars and two histograms (staleness and reward of the trained samples) at its train
step; each ``MediaSample`` gives an image at its policy version (the PNG poster, and for a
video the animated WebP too, as written by the reward stage: the bytes go into the event
file as they are, no decoding); pipeline snapshots give throughput, idle and drops every
``snapshot_every_s`` of run time. Open with ``tensorboard --logdir RUN_DIR/tensorboard``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unirl_stream.events import MediaSample, MetricEvent, TrainStep
from unirl_stream.monitor.aggregator import MonitorSink
from unirl_stream.monitor.snapshot import Snapshot

TB_DIR = "tensorboard"


class TensorBoardSink(MonitorSink):
    def __init__(self, run_dir: str | Path, snapshot_every_s: float = 10.0) -> None:
        from torch.utils.tensorboard.writer import FileWriter

        self.run_dir = Path(run_dir)
        self.writer = FileWriter(str(self.run_dir / TB_DIR))
        self.snapshot_every_s = snapshot_every_s
        self._last_snapshot = float("-inf")

    def emit(self, event: MetricEvent) -> None:
        if isinstance(event, TrainStep):
            self._train(event)
        elif isinstance(event, MediaSample):
            self._media(event)

    def _train(self, ev: TrainStep) -> None:
        from torch.utils.tensorboard import summary

        n = len(ev.staleness)
        scalars = {
            "train/loss": ev.loss, "train/clip_frac": ev.clip_frac, "train/approx_kl": ev.approx_kl,
            "train/grad_norm": ev.grad_norm, "train/policy_version": ev.policy_version,
            "train/samples": ev.samples, "reward/mean": ev.reward_mean, "reward/std": ev.reward_std,
            "staleness/mean": sum(ev.staleness) / n if n else 0.0,
            "staleness/max": max(ev.staleness) if n else 0,
            **{f"reward/{k}": v for k, v in ev.reward_terms.items()},
        }
        for tag, value in scalars.items():
            self.writer.add_summary(summary.scalar(tag, float(value)), ev.step, ev.t)
        for tag, values in (("staleness", ev.staleness), ("reward", ev.rewards)):
            if values:
                self.writer.add_summary(summary.histogram(tag, _array(values), "auto"), ev.step, ev.t)

    def _media(self, ev: MediaSample) -> None:
        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = []
        for tag, rel in ((f"media/{ev.rank}", ev.poster), (f"media_video/{ev.rank}", ev.anim)):
            if rel is None:
                continue
            path = self.run_dir / rel
            try:
                data = path.read_bytes()
                with Image.open(path) as im:  # reads the header only: the size
                    width, height = im.size
            except OSError:  # thinned away already (tiny media_max_mb): nothing to show
                continue
            values.append(Summary.Value(tag=tag, image=Summary.Image(
                height=height, width=width, colorspace=3, encoded_image_string=data)))
        if values:
            self.writer.add_summary(Summary(value=values), ev.version, ev.t)

    def on_snapshot(self, snap: Snapshot) -> None:
        from torch.utils.tensorboard import summary

        if not snap.finished and snap.uptime_s - self._last_snapshot < self.snapshot_every_s:
            return
        self._last_snapshot = snap.uptime_s
        step = int(snap.uptime_s)  # pipeline/* scalars are keyed on seconds of run time
        rows: dict[str, float] = {}
        for st in snap.stages:
            rows[f"pipeline/{st.name}/samples_per_s"] = st.samples_per_s
            rows[f"pipeline/{st.name}/idle_frac"] = st.idle_frac
        rows.update({f"pipeline/drops/{k}": float(v) for k, v in snap.staleness.drops.items()})
        for tag, value in rows.items():
            self.writer.add_summary(summary.scalar(tag, value), step, snap.t)

    def close(self) -> None:
        self.writer.close()


def _array(values: list[Any]) -> Any:
    import numpy as np

    return np.asarray(values, dtype=np.float64)

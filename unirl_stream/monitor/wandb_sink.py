"""wandb logging, fed by the same events and snapshots as the panel.

Offline unless the user configured wandb: an explicit ``WANDB_MODE`` is respected as is;
otherwise, without an API key in the environment, in ~/.netrc or in wandb's settings
file, the run is created with ``mode="offline"`` (files under ``RUN_DIR/wandb``, sync
later with ``wandb sync``). We never read the key's value, print it or store it: we only
ask whether one exists. wandb is imported when the sink is created, not before.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unirl_stream.api import MetricEvent, TrainStep
from unirl_stream.monitor.aggregator import MonitorSink
from unirl_stream.monitor.snapshot import Snapshot


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1]
        if netrc.netrc().authenticators(host.split("/")[0]) is not None:
            return True
    except (OSError, netrc.NetrcParseError):
        pass
    cfg = Path(os.environ.get("WANDB_CONFIG_DIR", Path.home() / ".config" / "wandb"))
    try:
        text = (cfg / "settings").read_text(encoding="utf-8")
    except OSError:
        return False
    return any(line.split("=")[0].strip() in ("mode", "api_key") for line in text.splitlines())


def resolve_mode(mode: str | None = None) -> str | None:
    """The ``mode`` to pass to ``wandb.init``: the caller's, else None where the user
    configured wandb (WANDB_MODE, a key or settings: wandb decides), else "offline"."""
    if mode is not None:
        return mode
    if os.environ.get("WANDB_MODE") or _has_credentials():
        return None
    return "offline"


def thumbnail(frames: Any, max_side: int = 128, max_frames: int = 4) -> Any:
    """uint8 media ([H,W,3], [F,H,W,3] or [B,F,H,W,3]: first sample) -> one uint8
    [h, w*k, 3] strip of up to ``max_frames`` evenly spaced frames, each at most
    ``max_side`` pixels (nearest-neighbour stride: no resampling library needed)."""
    import numpy as np

    arr = np.asarray(frames)
    if arr.ndim == 5:
        arr = arr[0]
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"thumbnail: expected uint8 [F,H,W,3] frames, got {arr.dtype} {arr.shape}")
    idx = np.linspace(0, arr.shape[0] - 1, min(max_frames, arr.shape[0])).round().astype(int)
    step = max(1, -(-max(arr.shape[1], arr.shape[2]) // max_side))
    picked = arr[idx][:, ::step, ::step]
    return np.concatenate(list(picked), axis=1)


class WandbSink(MonitorSink):
    """Logs every TrainStep (keyed on ``train/step``) and a pipeline snapshot every
    ``snapshot_every_s`` (keyed on ``pipeline/time_s``)."""

    def __init__(
        self,
        run_dir: str | Path,
        run_id: str,
        project: str = "unirl-stream",
        config: Mapping[str, Any] | None = None,
        media_every: int = 0,
        mode: str | None = None,
        snapshot_every_s: float = 10.0,
    ) -> None:
        import wandb

        self.media_every = media_every
        self.snapshot_every_s = snapshot_every_s
        self._last_snapshot_t = float("-inf")
        self._step = 0
        self.mode = resolve_mode(mode)
        self.run = wandb.init(
            project=project, name=run_id, dir=str(run_dir), mode=self.mode,  # type: ignore[arg-type]
            config=dict(config or {}), reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )
        for prefix in ("train", "reward", "staleness", "media"):
            self.run.define_metric(f"{prefix}/*", step_metric="train/step")
        self.run.define_metric("pipeline/*", step_metric="pipeline/time_s")

    def emit(self, event: MetricEvent) -> None:
        if not isinstance(event, TrainStep):
            return  # ticks, outcomes and store stats reach wandb through snapshots
        n = len(event.staleness)
        row: dict[str, Any] = {
            "train/step": event.step, "train/policy_version": event.policy_version,
            "train/samples": event.samples, "train/loss": event.loss,
            "train/clip_frac": event.clip_frac, "train/approx_kl": event.approx_kl,
            "train/grad_norm": event.grad_norm,
            "train/publish_latency_s": event.publish_latency_s,
            "reward/mean": event.reward_mean, "reward/std": event.reward_std,
            "staleness/mean": sum(event.staleness) / n if n else 0.0,
            "staleness/max": max(event.staleness) if n else 0,
        }
        row.update({f"reward/{k}": v for k, v in event.reward_terms.items()})
        self._step = event.step
        self.run.log(row)

    def on_snapshot(self, snap: Snapshot) -> None:
        if not snap.finished and snap.t - self._last_snapshot_t < self.snapshot_every_s:
            return
        self._last_snapshot_t = snap.t
        row: dict[str, Any] = {"pipeline/time_s": snap.uptime_s}
        for st in snap.stages:
            row[f"pipeline/{st.name}/samples_per_s"] = st.samples_per_s
            row[f"pipeline/{st.name}/idle_frac"] = st.idle_frac
            row[f"pipeline/{st.name}/queue_depth"] = st.queue_depth
            row[f"pipeline/{st.name}/workers_alive"] = st.workers_alive
        for term, v in snap.learning.reward_terms.items():
            row[f"pipeline/reward_terms/{term}"] = v
        row["pipeline/policy_version"] = snap.staleness.policy_version
        row["pipeline/staleness_mean"] = snap.staleness.mean
        for reason, n in snap.staleness.drops.items():
            row[f"pipeline/drops/{reason}"] = n
        row["pipeline/store_used_mb"] = snap.store.bytes_used / 1e6
        row["pipeline/store_put_mb_s"] = snap.store.put_mb_s
        row["pipeline/store_get_mb_s"] = snap.store.get_mb_s
        row["pipeline/bus_pub_dropped"] = snap.bus.pub_dropped
        self.run.log(row)

    def media_due(self, step: int) -> bool:
        return self.media_every > 0 and step % self.media_every == 0

    def log_media(self, step: int, frames: Any, caption: str = "", force: bool = False) -> bool:
        """Log a thumbnail strip of ``frames`` (uint8, see ``thumbnail``) at ``step`` if
        ``media_every`` says so (or ``force``). Returns whether it logged."""
        if not (force or self.media_due(step)):
            return False
        import wandb

        img = wandb.Image(thumbnail(frames), caption=caption or f"step {step}")
        self.run.log({"train/step": step, "media/sample": img})
        return True

    def close(self) -> None:
        self.run.finish()

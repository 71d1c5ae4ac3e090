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

from unirl_stream.events import MediaSample, MetricEvent, TrainStep
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


class WandbSink(MonitorSink):
    """Logs every TrainStep (keyed on ``train/step``), a pipeline snapshot every
    ``snapshot_every_s`` (keyed on ``pipeline/time_s``) and every ``MediaSample`` the
    reward stage wrote (its PNG poster as ``media/<rank>``, keyed on the train step
    reached when it arrived)."""

    def __init__(
        self,
        run_dir: str | Path,
        run_id: str,
        project: str = "unirl-stream",
        config: Mapping[str, Any] | None = None,
        mode: str | None = None,
        snapshot_every_s: float = 10.0,
    ) -> None:
        import wandb

        self.run_dir = Path(run_dir)
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
        if isinstance(event, MediaSample):
            self._media(event)
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

    def _media(self, ev: MediaSample) -> None:
        import wandb

        poster = self.run_dir / ev.poster
        if not poster.is_file():  # thinned away already (a tiny media_max_mb)
            return
        caption = f"v{ev.version} {ev.rank} reward {ev.reward:.4g}: {ev.prompt}"
        self.run.log({"train/step": self._step, f"media/{ev.rank}": wandb.Image(str(poster), caption=caption)})

    def close(self) -> None:
        self.run.finish()

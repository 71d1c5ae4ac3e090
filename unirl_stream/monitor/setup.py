"""What the driver calls: ``Monitoring.start(recipe, run_dir, run_id)`` builds the
aggregator with the sinks the recipe's ``[logging]`` asks for (wandb, Prometheus), and
hands out worker sinks, the live view and the media logger. Absent features are null
objects, so the driver's loop has no ``if wandb:``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from unirl_stream.monitor.aggregator import Aggregator, MonitorSink
from unirl_stream.monitor.panel import LiveView
from unirl_stream.pipeline.metrics import ZmqSink

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from unirl_stream.recipe import LoggingConfig, Recipe

_SECRET_WORDS = ("key", "token", "secret", "password", "auth")


class NullMedia:
    """Media logger when wandb is off."""

    def media_due(self, step: int) -> bool:
        return False

    def log_media(self, step: int, frames: Any, caption: str = "", force: bool = False) -> bool:
        return False


def scrub(config: Any) -> Any:
    """Recipe builtins without values whose key looks like a credential (a remote
    reward's token must not end up in wandb's config)."""
    if isinstance(config, Mapping):
        return {
            k: ("<redacted>" if any(w in str(k).lower() for w in _SECRET_WORDS) else scrub(v))
            for k, v in config.items()
        }
    if isinstance(config, list):
        return [scrub(v) for v in config]
    return config


def build_sinks(
    logging: LoggingConfig, run_dir: Path, run_id: str, config: Mapping[str, Any] | None = None
) -> tuple[list[MonitorSink], Any, Any]:
    """(sinks, media logger, Prometheus exporter or None) for a ``[logging]`` section."""
    sinks: list[MonitorSink] = []
    media: Any = NullMedia()
    prom = None
    if logging.wandb:
        from unirl_stream.monitor.wandb_sink import WandbSink

        media = WandbSink(
            run_dir, run_id, project=logging.wandb_project, config=scrub(config or {}),
            media_every=logging.media_every,
        )
        sinks.append(media)
    if logging.prometheus_port is not None:
        from unirl_stream.monitor.prometheus import PrometheusExporter

        prom = PrometheusExporter(logging.bind_host, logging.prometheus_port, run_id)
        sinks.append(prom)
    return sinks, media, prom


class Monitoring:
    """The driver's handle on monitoring for one run."""

    def __init__(self, aggregator: Aggregator, media: Any, prometheus: Any, logging: Any) -> None:
        self.aggregator = aggregator
        self.media = media  # .media_due(step) / .log_media(step, frames)
        self.prometheus = prometheus
        self.logging = logging

    @classmethod
    def start(
        cls,
        recipe: Recipe,
        run_dir: str | Path,
        run_id: str,
        extra_sinks: Iterable[MonitorSink] = (),
        stage_tasks: Mapping[str, str] | None = None,
    ) -> Monitoring:
        run_dir = Path(run_dir)
        config = msgspec.to_builtins(recipe)
        config.pop("source", None)
        sinks, media, prom = build_sinks(recipe.logging, run_dir, run_id, config)
        p = recipe.pipeline
        expected = {"rollout": p.rollout_workers, "reward": p.reward_workers,
                    "trainer": p.trainer_workers}
        expected.update({s.name: s.workers for s in p.stages})
        agg = Aggregator(
            run_dir, run_id, eta=p.max_staleness, bind_host=recipe.logging.bind_host,
            tick_s=p.tick_s, expected_workers=expected, stage_tasks=stage_tasks,
            sinks=[*sinks, *extra_sinks],
        ).start()
        return cls(agg, media, prom, recipe.logging)

    @property
    def address(self) -> str:
        """The PULL address stage workers send to."""
        return self.aggregator.address

    def sink_for(self, source: str) -> ZmqSink:
        """A picklable sink for the worker named ``source`` ("rollout/0", "trainer/0")."""
        return self.aggregator.sink_for(source)

    def live_view(self, console: Console | None = None, live: bool | None = None) -> LiveView:
        """The ``run`` panel; ``live=False`` for ``--no-live`` (None: the recipe's)."""
        return LiveView(
            self.aggregator.snapshot, console=console,
            live=self.logging.live if live is None else live,
            log_every_s=self.logging.log_every_s,
        )

    def close(self) -> None:
        self.aggregator.close()

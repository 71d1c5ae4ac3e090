"""What the driver calls: ``Monitoring.start(run_dir, recipe, run_id, live)`` builds the
aggregator with the sinks the recipe's ``[logging]`` asks for (wandb, TensorBoard,
Prometheus; ``metrics.jsonl`` always), and hands out worker sinks and the live view.
Every sink sees every event (media included: ``events.MediaSample``) and snapshot; a sink
that is not asked for is simply not in the list, so no loop has an ``if wandb:``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from unirl_stream.api import UnirlError, UserInputError
from unirl_stream.events import MetricEvent, MetricSink
from unirl_stream.monitor.aggregator import Aggregator, MonitorSink
from unirl_stream.monitor.bus import ZmqSink
from unirl_stream.monitor.panel import LiveView
from unirl_stream.monitor.snapshot import Snapshot

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from unirl_stream.recipe import LoggingConfig, Recipe

_SECRET_WORDS = ("key", "token", "secret", "password", "auth")


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
) -> tuple[list[MonitorSink], Any]:
    """(sinks, Prometheus exporter or None) for a ``[logging]`` section."""
    sinks: list[MonitorSink] = []
    prom = None
    if logging.tensorboard:
        from unirl_stream.monitor.tensorboard_sink import TensorBoardSink

        sinks.append(TensorBoardSink(run_dir))
    if logging.wandb:
        from unirl_stream.monitor.wandb_sink import WandbSink

        try:
            wandb_sink = WandbSink(run_dir, run_id, project=logging.wandb_project,
                                   config=scrub(config or {}))
        except Exception as e:  # wandb's own message; it never contains the key
            for sink in sinks:
                sink.close()
            raise UnirlError(
                f"[logging] wandb = true: could not start a wandb run ({type(e).__name__}: {e}); "
                "log in (`wandb login`), set WANDB_MODE=offline, or set wandb = false"
            ) from e
        sinks.append(wandb_sink)
    if logging.prometheus_port is not None:
        from unirl_stream.monitor.prometheus import PrometheusExporter

        try:
            prom = PrometheusExporter(logging.bind_host, logging.prometheus_port, run_id)
        except OSError as e:
            for sink in sinks:
                sink.close()
            raise UserInputError(
                f"[logging] prometheus_port = {logging.prometheus_port}: cannot serve on "
                f"{logging.bind_host}:{logging.prometheus_port} ({e.strerror or e}); "
                "choose another port, or 0 for a free one"
            ) from None
        sinks.append(prom)
    return sinks, prom


class ZmqSinkFactory:
    """Picklable ``source -> ZmqSink`` for Ray actors (``StageActor(..., sink_factory)``)."""

    def __init__(self, address: str, run_id: str) -> None:
        self.address, self.run_id = address, run_id

    def __call__(self, source: str) -> ZmqSink:
        return ZmqSink(self.address, self.run_id, source)


class Monitoring:
    """The driver's handle on monitoring for one run.

    ``start`` builds the aggregator and starts the ``run`` panel (or the plain log lines);
    ``local_sink`` / ``sink_factory`` give in-process and Ray workers their sinks;
    ``close`` stops the panel after the final snapshot."""

    def __init__(self, aggregator: Aggregator, prometheus: Any, view: LiveView) -> None:
        self.aggregator = aggregator
        self.prometheus = prometheus  # PrometheusExporter (.url) or None
        self.view = view

    @classmethod
    def start(
        cls,
        run_dir: str | Path,
        recipe: Recipe,
        run_id: str,
        live: bool = True,
        console: Console | None = None,
        extra_sinks: Iterable[MonitorSink] = (),
    ) -> Monitoring:
        """``live``: the panel when stdout is a terminal (False: ``--no-live``); off a
        terminal, one plain line every ``[logging] log_every_s``."""
        run_dir = Path(run_dir)
        config = msgspec.to_builtins(recipe)
        config.pop("source", None)
        sinks, prom = build_sinks(recipe.logging, run_dir, run_id, config)
        p = recipe.pipeline
        expected = {"rollout": p.rollout_workers, "reward": p.reward_workers,
                    "trainer": p.trainer_workers}
        expected.update({s.name: s.workers for s in p.stages})
        try:
            agg = Aggregator(
                run_dir, run_id, eta=p.max_staleness, bind_host=recipe.logging.bind_host,
                tick_s=p.tick_s, expected_workers=expected,
                sinks=[*sinks, *extra_sinks],
            ).start()
        except BaseException:
            for sink in sinks:
                sink.close()
            raise
        view = LiveView(agg.snapshot, console=console, live=live,
                        log_every_s=recipe.logging.log_every_s)
        return cls(agg, prom, view.start())

    @property
    def address(self) -> str:
        """The PULL address stage workers send to."""
        return self.aggregator.address

    def emit(self, event: MetricEvent) -> None:
        self.aggregator.emit(event)

    def local_sink(self) -> MetricSink:
        """For in-process (thread) workers: straight into the aggregator, no socket."""
        return self.aggregator

    def sink_factory(self) -> ZmqSinkFactory:
        """For Ray actors: ``factory(source)`` builds a ZmqSink in the actor."""
        return ZmqSinkFactory(self.aggregator.address, self.aggregator.run_id)

    def sink_for(self, source: str) -> ZmqSink:
        return self.aggregator.sink_for(source)

    def snapshot(self) -> Snapshot:
        return self.aggregator.snapshot()

    def close(self) -> None:
        self.aggregator.close()  # the final snapshot first, so the view's last frame has it
        self.view.stop()

"""Optional Prometheus ``/metrics`` endpoint with the snapshot's quantities.

A custom collector in its own CollectorRegistry (never the process-global one, so two
runs or tests in one process do not collide) reports the latest published snapshot at
scrape time: the numbers a scrape returns are exactly the snapshot's, not a second
bookkeeping that could drift. Bound to 127.0.0.1 unless ``[logging] bind_host`` says
otherwise; port 0 picks a free port (see ``.port``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from unirl_stream.monitor.aggregator import MonitorSink
from unirl_stream.monitor.snapshot import Snapshot


def _gauge(run_id: str, name: str, doc: str, value: float) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    g = GaugeMetricFamily(f"unirl_{name}", doc, labels=["run_id"])
    g.add_metric([run_id], value)
    return g


def _labelled(run_id: str, counter: bool, name: str, doc: str, label: str,
              items: Mapping[str, float]) -> Any:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    m = (CounterMetricFamily if counter else GaugeMetricFamily)(
        f"unirl_{name}", doc, labels=["run_id", label]
    )
    for k, v in items.items():
        m.add_metric([run_id, k], v)
    return m


def _stage_families(s: Snapshot) -> Iterator[Any]:
    rid, per = s.run_id, {st.name: st for st in s.stages}
    yield _labelled(rid, False, "stage_workers_alive", "Workers that ticked recently", "stage",
                    {k: v.workers_alive for k, v in per.items()})
    yield _labelled(rid, False, "stage_samples_per_second", "Windowed throughput", "stage",
                    {k: v.samples_per_s for k, v in per.items()})
    yield _labelled(rid, False, "stage_queue_depth", "Samples ready for the stage", "stage",
                    {k: v.queue_depth for k, v in per.items()})
    yield _labelled(rid, False, "stage_idle_fraction", "Idle share of worker time", "stage",
                    {k: v.idle_frac for k, v in per.items()})
    yield _labelled(rid, True, "stage_processed", "Samples processed", "stage",
                    {k: v.processed for k, v in per.items()})
    yield _labelled(rid, True, "stage_dropped", "Samples dropped by the stage", "stage",
                    {k: v.dropped for k, v in per.items()})


def _staleness_families(s: Snapshot) -> Iterator[Any]:
    from prometheus_client.core import HistogramMetricFamily

    rid, st = s.run_id, s.staleness
    yield _gauge(rid, "policy_version", "Trainer's current policy version", st.policy_version)
    yield _staleness_histogram(HistogramMetricFamily, s)
    yield _gauge(rid, "staleness_mean", "Mean staleness of consumed samples", st.mean)
    yield _gauge(rid, "staleness_max", "Max staleness of consumed samples", st.max)
    yield _labelled(rid, True, "dropped_samples", "Dropped samples by reason", "reason",
                    {k: float(v) for k, v in st.drops.items()})
    yield _labelled(rid, False, "producer_policy_version", "Version a producer samples with",
                    "worker", {k: float(v) for k, v in st.producer_versions.items()})


def _learning_families(s: Snapshot) -> Iterator[Any]:
    rid, ln = s.run_id, s.learning
    yield _gauge(rid, "train_step", "Latest optimizer step", ln.step)
    yield _labelled(rid, True, "trained_samples", "Samples trained on", "scope",
                    {"all": ln.samples})
    yield _gauge(rid, "reward_mean", "Batch reward mean", ln.reward_mean)
    yield _gauge(rid, "reward_std", "Batch reward std", ln.reward_std)
    yield _labelled(rid, False, "reward_term", "Reward sub-scores", "term", ln.reward_terms)
    yield _gauge(rid, "loss", "Policy loss", ln.loss)
    yield _gauge(rid, "clip_fraction", "Clipped ratio fraction", ln.clip_frac)
    yield _gauge(rid, "approx_kl", "Approximate KL(behavior||new)", ln.approx_kl)
    yield _gauge(rid, "grad_norm", "Gradient norm", ln.grad_norm)


def _store_families(s: Snapshot) -> Iterator[Any]:
    rid, sv, bus = s.run_id, s.store, s.bus
    yield _gauge(rid, "store_bytes_used", "Store bytes used", sv.bytes_used)
    yield _gauge(rid, "store_budget_bytes", "Store byte budget", sv.budget_bytes)
    yield _gauge(rid, "store_samples", "Samples in the store", sv.samples)
    yield _gauge(rid, "store_put_mb_per_second", "Store write MB/s", sv.put_mb_s)
    yield _gauge(rid, "store_get_mb_per_second", "Store read MB/s", sv.get_mb_s)
    yield _labelled(rid, False, "store_task_ready", "Samples ready per consumer task", "task",
                    {k: v.ready for k, v in sv.tasks.items()})
    yield _labelled(rid, False, "store_task_leased", "Samples leased per consumer task", "task",
                    {k: v.leased for k, v in sv.tasks.items()})
    yield _labelled(rid, True, "bus_events", "Metric events received", "scope",
                    {"all": bus.events})
    yield _labelled(rid, True, "bus_pub_dropped", "Snapshots dropped for full subscribers",
                    "scope", {"all": bus.pub_dropped})
    yield _labelled(rid, True, "bus_sender_dropped", "Events dropped by senders", "scope",
                    {"all": bus.sender_dropped})


class _Collector:
    def __init__(self, exporter: PrometheusExporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[Any]:
        s = self.exporter.latest  # one snapshot for the whole scrape
        yield from _stage_families(s)
        yield from _staleness_families(s)
        yield from _learning_families(s)
        yield from _store_families(s)


def _staleness_histogram(kind: Any, s: Snapshot) -> Any:
    st = s.staleness
    h = kind("unirl_staleness", "Staleness of consumed samples (versions)", labels=["run_id"])
    cum, buckets = 0, []
    for i, n in enumerate(st.histogram[: st.eta + 1]):
        cum += n
        buckets.append((str(float(i)), cum))
    buckets.append(("+Inf", st.count))
    h.add_metric([s.run_id], buckets=buckets, sum_value=st.mean * st.count)
    return h


class PrometheusExporter(MonitorSink):
    """Serves ``/metrics`` from the latest snapshot handed to it by the aggregator."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, run_id: str = "") -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        self.latest = Snapshot(run_id=run_id)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))  # type: ignore[arg-type]
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.host = host
        self._closed = False
        self.port: int = self._server.server_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def on_snapshot(self, snap: Snapshot) -> None:
        self.latest = snap  # one reference swap: scrapes see a whole snapshot

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

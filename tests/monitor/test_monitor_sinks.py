"""Prometheus scrape == snapshot; the driver handle (Monitoring) from a recipe; LiveView
on and off a terminal."""

from __future__ import annotations

import io
import re
import urllib.request

import pytest
from monitor_synth import ETA, RUN_ID, WORKERS, emit_round, start_workers, wait_for
from rich.console import Console

from unirl_stream.monitor.aggregator import Aggregator
from unirl_stream.monitor.panel import LiveView
from unirl_stream.monitor.prometheus import PrometheusExporter
from unirl_stream.monitor.snapshot import Snapshot
from unirl_stream.recipe import decode


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "run_id"))
            out[(s.name, labels)] = s.value
    return out


def test_prometheus_scrape_matches_snapshot(tmp_path) -> None:
    prom = PrometheusExporter("127.0.0.1", 0, RUN_ID)
    agg = Aggregator(tmp_path, RUN_ID, eta=ETA, expected_workers=WORKERS, sinks=[prom])
    try:
        assert prom.port > 0 and prom.url.startswith("http://127.0.0.1:")
        for i in range(5):
            emit_round(agg, i)
        snap = agg.refresh()
        m = scrape(prom.url)
        st, ln, sv = snap.staleness, snap.learning, snap.store
        assert m[("unirl_policy_version", ())] == st.policy_version == 2
        assert m[("unirl_train_step", ())] == ln.step == 4
        assert m[("unirl_trained_samples_total", (("scope", "all"),))] == ln.samples
        for stage in snap.stages:
            lab = (("stage", stage.name),)
            assert m[("unirl_stage_samples_per_second", lab)] == pytest.approx(stage.samples_per_s)
            assert m[("unirl_stage_workers_alive", lab)] == stage.workers_alive
            assert m[("unirl_stage_queue_depth", lab)] == stage.queue_depth
            assert m[("unirl_stage_idle_fraction", lab)] == pytest.approx(stage.idle_frac)
            assert m[("unirl_stage_processed_total", lab)] == stage.processed
        cum = 0
        for i in range(ETA + 1):
            cum += st.histogram[i]
            assert m[("unirl_staleness_bucket", (("le", f"{float(i)}"),))] == cum
        assert m[("unirl_staleness_count", ())] == st.count
        assert m[("unirl_staleness_sum", ())] == pytest.approx(st.mean * st.count)
        assert m[("unirl_staleness_max", ())] == st.max
        assert m[("unirl_dropped_samples_total", (("reason", "stale"),))] == st.drops["stale"]
        assert m[("unirl_producer_policy_version", (("worker", "rollout/1"),))] == (
            st.producer_versions["rollout/1"])
        assert m[("unirl_reward_mean", ())] == pytest.approx(ln.reward_mean)
        assert m[("unirl_reward_term", (("term", "ocr"),))] == ln.reward_terms["ocr"]
        assert m[("unirl_loss", ())] == pytest.approx(ln.loss)
        assert m[("unirl_clip_fraction", ())] == ln.clip_frac
        assert m[("unirl_approx_kl", ())] == pytest.approx(ln.approx_kl)
        assert m[("unirl_grad_norm", ())] == pytest.approx(ln.grad_norm)
        assert m[("unirl_store_bytes_used", ())] == sv.bytes_used
        assert m[("unirl_store_budget_bytes", ())] == sv.budget_bytes
        assert m[("unirl_store_put_mb_per_second", ())] == pytest.approx(sv.put_mb_s)
        assert m[("unirl_store_task_ready", (("task", "train"),))] == sv.tasks["train"].ready
        # a later snapshot is what the next scrape shows
        emit_round(agg, 5)
        agg.refresh()
        assert scrape(prom.url)[("unirl_train_step", ())] == 5
    finally:
        agg.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(prom.url, timeout=2)


def recipe(tmp_path, **logging):
    return decode({"run": {"name": "t", "total_steps": 1},
                   "model": {"name": "synthetic", "path": str(tmp_path)},
                   "data": {"prompts": "p.txt"},
                   "pipeline": {"max_staleness": ETA, "rollout_workers": 2, "tick_s": 0.2},
                   "logging": logging}, "test")


def test_monitoring_from_recipe(tmp_path) -> None:
    import pickle

    from unirl_stream.monitor.setup import Monitoring

    out = io.StringIO()
    con = Console(file=out, width=300)  # not a terminal: plain lines
    mon = Monitoring.start(tmp_path, recipe(tmp_path, prometheus_port=0, log_every_s=0.1),
                           RUN_ID, live=True, console=con)
    try:
        assert mon.address.startswith("tcp://127.0.0.1:") and mon.prometheus is not None
        factory = pickle.loads(pickle.dumps(mon.sink_factory()))  # what Ray ships to actors
        sink = factory("rollout/0")
        for i in range(3):
            emit_round(mon.local_sink(), i)
        from monitor_synth import round_events

        for e in round_events(3):
            if e.source == "rollout/0":
                sink.emit(e)
        wait_for(lambda: mon.snapshot().stage("rollout").processed == 3 * 9 + 4,  # type: ignore[union-attr]
                 what="the actor-side event")
        sink.close()
        snap = mon.snapshot()
        assert snap.stage("rollout").workers_expected == 2  # type: ignore[union-attr]
        assert snap.staleness.eta == ETA
        wait_for(lambda: "v=1 step=2" in out.getvalue(), what="a plain log line")
    finally:
        mon.close()
    lines = [x for x in out.getvalue().splitlines() if x.startswith(f"[{RUN_ID}")]
    assert len(lines) >= 2
    assert re.search(r"rollout=\d+\.\d+/s\(q\d+,idle\d+%,w\d\)", lines[-1])


def test_live_view_on_a_terminal(tmp_path) -> None:
    agg = Aggregator(tmp_path, RUN_ID, eta=ETA, expected_workers=WORKERS)
    for i in range(3):
        emit_round(agg, i)
    out = io.StringIO()
    con = Console(file=out, force_terminal=True, width=160, record=True)
    calls = []

    def snap() -> Snapshot:
        calls.append(1)
        return agg.snapshot()

    view = LiveView(snap, console=con, live=True, log_every_s=100)
    assert view.live
    with view:
        wait_for(lambda: len(calls) >= 3, what="a few refreshes")
    text = con.export_text()
    assert "staleness" in text and "samples/s" in text and "policy version" in text
    agg.close()
    # --no-live on a terminal: plain lines, no panel
    out2 = io.StringIO()
    con2 = Console(file=out2, force_terminal=True, width=300)
    view2 = LiveView(agg.snapshot, console=con2, live=False, log_every_s=0.05)
    assert not view2.live
    with view2:
        wait_for(lambda: out2.getvalue().count("\n") >= 2, what="plain lines")
    assert "╭" not in out2.getvalue()


def test_workers_through_the_real_bus_feed_prometheus(live_agg, stop_event) -> None:
    prom = PrometheusExporter("127.0.0.1", 0, RUN_ID)
    live_agg.sinks.append(prom)
    try:
        for th in start_workers(live_agg.address, range(4), dt=0.02, stop=stop_event):
            th.join(20)
        wait_for(lambda: prom.latest.learning.step == 3, what="a published snapshot")
        assert scrape(prom.url)[("unirl_policy_version", ())] == prom.latest.staleness.policy_version
    finally:
        prom.close()


def test_prometheus_port_in_use_is_a_user_error(tmp_path) -> None:
    from unirl_stream.api import UserInputError
    from unirl_stream.monitor.setup import Monitoring

    taken = PrometheusExporter("127.0.0.1", 0, RUN_ID)
    try:
        with pytest.raises(UserInputError, match=rf"prometheus_port = {taken.port}: cannot serve"):
            Monitoring.start(tmp_path, recipe(tmp_path, prometheus_port=taken.port), RUN_ID,
                             live=False, console=Console(file=io.StringIO()))
    finally:
        taken.close()
    assert not (tmp_path / "monitor.json").exists()  # nothing half-started

"""The bus end to end: worker threads with ZmqSinks -> Aggregator sockets -> panel,
``monitor --once --json`` and metrics.jsonl agreeing, replay and plot of a finished run."""

from __future__ import annotations

import io
import json
import re

import msgspec
from monitor_synth import BATCH, ETA, RUN_ID, WORKERS, emit_round, start_workers, wait_for
from rich.console import Console

from unirl_stream.monitor.aggregator import Aggregator
from unirl_stream.monitor.panel import render
from unirl_stream.monitor.snapshot import Snapshot
from unirl_stream.monitor.viewer import monitor_command

NUM = r"-?\d+(?:\.\d+)?"


def panel_text(snap: Snapshot) -> str:
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(render(snap))
    return console.export_text()


def assert_every_field_numeric(text: str) -> None:
    """Each field of the issue's list appears with a number next to it."""
    for stage in WORKERS:
        # stage  workers alive/expected  samples/s  processed  queue  idle%  dropped
        row = rf"{stage}\s+\d+/\d+\s+{NUM}\s+\d+\s+\d+\s+\d+%\s+\d+"
        assert re.search(row, text), f"stage row {stage} not numeric:\n{text}"
    patterns = [
        rf"policy version {NUM} · mean {NUM} · max {NUM} · last {NUM} · eta {NUM} · n {NUM}",
        rf"histogram 0:\S*{NUM} 1:\S*{NUM} 2:\S*{NUM} >2:\S*{NUM} · drops stale {NUM}",
        rf"producers hold rollout/0 v{NUM} \(lag {NUM}\) rollout/1 v{NUM} \(lag {NUM}\)",
        rf"step {NUM} · {NUM} trained · reward {NUM} ± {NUM}",
        rf"terms ocr {NUM} · pickscore {NUM}",
        rf"loss {NUM} · clip frac {NUM} · approx kl {NUM} · grad norm {NUM}",
        rf"used {NUM} MB / {NUM} MB \({NUM}%\) · {NUM} samples",
        rf"put / get {NUM} / {NUM} MB/s",
    ]
    for pat in patterns:
        assert re.search(pat, text), f"missing {pat!r} in panel:\n{text}"


def test_quickstart_style_run_panel_shows_every_field(live_agg: Aggregator, stop_event) -> None:
    threads = start_workers(live_agg.address, range(6), dt=0.05, stop=stop_event)
    for th in threads:
        th.join(timeout=20)
    wait_for(lambda: live_agg.snapshot().learning.step == 5, what="all train steps")
    wait_for(lambda: live_agg.latest.learning.step == 5, what="a published snapshot")
    snap = live_agg.snapshot()
    text = panel_text(snap)
    assert_every_field_numeric(text)
    # the numbers are the ones sent, not just any numbers
    assert snap.learning.samples == 6 * BATCH
    assert snap.staleness.policy_version == 2
    assert {s.name: s.processed for s in snap.stages} == {
        "rollout": 6 * (4 + 5), "reward": 6 * 4, "trainer": 6 * 4}
    assert snap.stage("rollout").samples_per_s > 0  # type: ignore[union-attr]
    assert snap.store.put_mb_s == 5.0 and snap.store.budget_bytes == 200_000_000
    assert snap.bus.sender_dropped == 0 and snap.bus.decode_errors == 0


def test_once_json_matches_metrics_jsonl(live_agg: Aggregator, stop_event) -> None:
    start_workers(live_agg.address, range(10_000), dt=0.03, stop=stop_event)
    wait_for(lambda: live_agg.latest.learning.step >= 3, what="train steps")
    console = Console(record=True, width=200, file=io.StringIO())
    assert monitor_command(live_agg.run_dir, once=True, as_json=True, console=console) == 0
    snap = msgspec.json.decode(console.export_text().strip(), type=Snapshot)
    assert snap.run_id == RUN_ID and not snap.finished
    seq = snap.seq
    wait_for(lambda: any(r.get("kind") == "pipeline" and r["seq"] >= seq
                         for r in _rows(live_agg)), what="a later pipeline row")
    stop_event.set()
    rows = _rows(live_agg)
    train = [r for r in rows if r["kind"] == "train"]
    step = snap.learning.step
    # exact: the train rows up to the snapshot's step carry its version and sample count
    row = next(r for r in train if r["step"] == step)
    assert row["policy_version"] == snap.staleness.policy_version
    assert sum(r["samples"] for r in train if r["step"] <= step) == snap.learning.samples
    # within one refresh: the pipeline rows around the snapshot bracket its counters
    pipe = [r for r in rows if r["kind"] == "pipeline"]
    before = [r for r in pipe if r["seq"] <= seq]
    after = next(r for r in pipe if r["seq"] >= seq)
    lo = before[-1] if before else {"learning": {"samples": 0}, "staleness": {"policy_version": -1}}
    assert lo["learning"]["samples"] <= snap.learning.samples <= after["learning"]["samples"]
    assert (lo["staleness"]["policy_version"] <= snap.staleness.policy_version
            <= after["staleness"]["policy_version"])
    assert after["seq"] - seq <= 3  # a row every tick_s = every 2nd or 3rd refresh


def _rows(agg: Aggregator) -> list[dict]:
    lines = (agg.run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if x.strip()]


def test_bad_frames_are_counted_not_fatal(live_agg: Aggregator) -> None:
    import zmq

    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(live_agg.address)
    push.send(b"\x80\x04garbage")  # e.g. a pickle: refused
    push.send(msgspec.msgpack.encode({"type": "train", "nope": 1}))
    from monitor_synth import round_events

    from unirl_stream.monitor.bus import encode_event

    for e in round_events(0):
        push.send(encode_event(e))
    push.close(linger=1000)
    wait_for(lambda: live_agg.snapshot().learning.step == 0, what="the good events")
    assert live_agg.snapshot().bus.decode_errors == 2


def test_finished_run_replay_and_plot(tmp_path) -> None:
    run = tmp_path / "run"
    agg = Aggregator(run, RUN_ID, eta=ETA, expected_workers=WORKERS, tick_s=0.2).start()
    for i in range(12):
        emit_round(agg, i)
        agg.refresh(write_row=True)
    agg.close()
    info = json.loads((run / "monitor.json").read_text())
    assert info["state"] == "finished" and info["run_id"] == RUN_ID
    assert info["pub_address"].startswith("tcp://127.0.0.1:")

    out = Console(record=True, width=160, file=io.StringIO())
    assert monitor_command(run, once=True, as_json=True, console=out) == 0
    snap = msgspec.json.decode(out.export_text().strip(), type=Snapshot)
    assert snap.finished and snap.learning.step == 11 and snap.learning.samples == 12 * BATCH

    out = Console(record=True, width=160, file=io.StringIO())
    assert monitor_command(run, console=out) == 0
    text = out.export_text()
    assert "replay" in text and "summary" in text
    assert_every_field_numeric(text)
    for name in ("reward", "staleness", "rollout samples/s", "trainer samples/s"):
        lines = [x for x in text.splitlines()
                 if x.strip(" │").startswith(name) and re.search(r"[▁▂▃▄▅▆▇█]{12}", x)]
        assert lines, f"no sparkline for {name}"
    assert re.search(r"reward\s+│\s+first 0\.3000\s+last 0\.5200", text)

    png = tmp_path / "curves.png"
    assert monitor_command(run, plot=png, console=Console(file=io.StringIO())) == 0
    import matplotlib.image

    img = matplotlib.image.imread(png)
    assert img.shape[0] >= 600 and img.shape[1] >= 600
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_bad_run_dir_is_a_user_error(tmp_path) -> None:
    import pytest

    from unirl_stream.api import UserInputError

    with pytest.raises(UserInputError, match="no such run directory"):
        monitor_command(tmp_path / "missing", console=Console(file=io.StringIO()))
    with pytest.raises(UserInputError, match="no metrics file"):
        monitor_command(tmp_path, console=Console(file=io.StringIO()))


def test_follow_json_lines_until_the_run_finishes(live_agg: Aggregator) -> None:
    """``monitor --json`` without --once streams snapshots (one JSON per line) and ends
    by itself on the run's final snapshot."""
    import threading

    for i in range(3):
        emit_round(live_agg, i)
    timer = threading.Timer(1.5, live_agg.close)
    timer.start()
    console = Console(record=True, width=100, file=io.StringIO())
    try:
        assert monitor_command(live_agg.run_dir, as_json=True, console=console) == 0
    finally:
        timer.join()
    snaps = [msgspec.json.decode(x, type=Snapshot) for x in console.export_text().splitlines()]
    assert len(snaps) >= 3
    assert [s.seq for s in snaps] == sorted(s.seq for s in snaps)
    assert snaps[-1].finished and not any(s.finished for s in snaps[:-1])
    assert snaps[-1].learning.step == 2


def test_cli_monitor_command(tmp_path) -> None:
    """The real ``unirl-stream monitor`` command (unirl_stream/cli.py) reaches our code."""
    import subprocess
    import sys

    run = tmp_path / "run"
    agg = Aggregator(run, RUN_ID, eta=ETA, expected_workers=WORKERS)
    for i in range(3):
        emit_round(agg, i)
        agg.refresh(write_row=True)
    agg.close()
    cli = [sys.executable, "-m", "unirl_stream.cli", "monitor", str(run)]
    out = subprocess.run([*cli, "--once", "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    snap = msgspec.json.decode(out.stdout.strip(), type=Snapshot)
    assert snap.finished and snap.learning.samples == 3 * BATCH
    png = tmp_path / "p.png"
    out = subprocess.run([*cli, "--plot", str(png)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([*cli, "--plot", str(tmp_path / "p.txt")], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "--plot" in bad.stderr


def test_crashed_run_falls_back_to_replay(tmp_path) -> None:
    """monitor.json still says "running" but nobody publishes (the driver was killed):
    the viewer replays metrics.jsonl instead of hanging."""
    import os

    run = tmp_path / "run"
    agg = Aggregator(run, RUN_ID, eta=ETA, expected_workers=WORKERS).start()
    for i in range(2):
        emit_round(agg, i)
    agg.refresh(write_row=True)
    info = json.loads((run / "monitor.json").read_text())
    agg.close()
    (run / "metrics.jsonl").write_text(  # drop the final row: as if killed before close
        "".join(x + "\n" for x in (run / "metrics.jsonl").read_text().splitlines()[:-1]))
    for pid in (os.getpid(), 2**22 + 12345):  # alive but silent / gone
        (run / "monitor.json").write_text(json.dumps({**info, "state": "running", "pid": pid}))
        out = Console(record=True, width=160, file=io.StringIO())
        assert monitor_command(run, once=True, as_json=True, console=out,
                               attach_timeout_s=0.3) == 0
        snap = msgspec.json.decode(out.export_text().strip(), type=Snapshot)
        assert not snap.finished and snap.learning.step == 1

"""``unirl-stream report`` and the summary block on in-process runs (synthetic policy):
media from the reward stage, a finished run, a corrupt metrics line, a crashed run, and
folders that are not run directories."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pytest

from unirl_stream.api import UserInputError
from unirl_stream.monitor.report import end_of_run, write_report
from unirl_stream.monitor.summary import load_run
from unirl_stream.pipeline.driver import RunFailed, run

from .conftest import ledger


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "unirl_stream.cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_finished_run_report_and_media(recipe_factory, tmp_path, capfd):
    recipe = recipe_factory(run={"name": "rep", "total_steps": 6}, logging={"live": False, "media_every": 2})
    run_dir = run(recipe, run_dir=tmp_path / "rep", live=False)
    out = capfd.readouterr().out
    assert f"== run finished: {run_dir} " in out and f"unirl-stream report {run_dir} --open" in out
    rows = [json.loads(x) for x in (run_dir / "media" / "index.jsonl").read_text().splitlines()]
    # versions 0..5 train; version 6 (after the last step) may still be scored and shown
    assert 0 in {r["version"] for r in rows} and {r["version"] for r in rows} <= {0, 2, 4, 6}
    # every group of a due version was written or dropped (a loaded machine drops, counted)
    counts = json.loads((run_dir / "logs" / "media-reward_0.json").read_text())
    assert counts["media/written"] == len(rows)
    journal = [json.loads(x) for x in (run_dir / "groups.jsonl").read_text().splitlines()]
    due = [g for g in journal if g["version"] in (0, 2, 4)]
    offered = counts["media/written"] + counts["media/dropped"]
    assert 3 * len(due) <= offered <= 3 * (len(due) + sum(g["version"] == 6 for g in journal))
    by_id = {r["sample_id"]: r for r in ledger(run_dir)}
    for r in rows:  # same sample, same reward as the trainer saw; single images: no WebP
        assert r["anim"] is None and by_id[r["sample_id"]]["behavior_version"] == r["version"]
        if r["version"] < 6:
            assert by_id[r["sample_id"]]["reward"] == r["reward"]
    html = (run_dir / "report.html").read_text()
    assert not re.search(r"https?://", html)
    groups: dict[int, set[str]] = {}
    for r in rows:
        groups.setdefault(r["version"], set()).add(r["group"])
    # <= 6 versions: all shown, the first two groups of each, three samples a group
    assert html.count('<figure class="sample"') == sum(3 * min(2, len(g)) for g in groups.values())
    assert '<pre id="recipe">[run]' in html and "skipped:" not in html


def test_corrupt_metrics_line_is_reported_not_raised(recipe_factory, tmp_path):
    recipe = recipe_factory(run={"name": "bad", "total_steps": 2})
    run_dir = run(recipe, run_dir=tmp_path / "bad", live=False)
    with (run_dir / "metrics.jsonl").open("ab") as fh:
        fh.write(b'{"kind": "train", "step": 3, "loss\n\x00\xff not json\n')
    with (run_dir / "ledger.jsonl").open("a") as fh:
        fh.write("[1, 2]\n")
    out = _cli("report", str(run_dir))
    assert out.returncode == 0 and out.stderr == ""
    html = (run_dir / "report.html").read_text()
    assert "skipped: metrics.jsonl: 2 unreadable line(s) skipped" in html
    assert "skipped: ledger.jsonl: 1 unreadable line(s) skipped" in html
    stream = io.StringIO()
    end_of_run(run_dir, stream)
    assert "note: metrics.jsonl: 2 unreadable line(s) skipped" in stream.getvalue()


def test_crashed_run_gets_a_report(recipe_factory, tmp_path):
    recipe = recipe_factory(run={"name": "nan"},
                            reward=[{"name": "synthetic", "options": {"nan_every": 5}}])
    with pytest.raises(RunFailed):
        run(recipe, run_dir=tmp_path / "nan", live=False)
    page = write_report(tmp_path / "nan")
    assert "<h2>Recipe</h2>" in page.read_text()
    assert load_run(tmp_path / "nan").state in ("finished", "stopped")


def test_not_a_run_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "missing"):
        out = _cli("report", str(target))
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
        assert out.stderr.startswith(f"error: {target}: ") and "run directory" in out.stderr
    with pytest.raises(UserInputError, match="not a run directory"):
        load_run(tmp_path / "empty")


def test_running_run_gets_a_snapshot_report(recipe_factory, tmp_path):
    import os

    recipe = recipe_factory(run={"name": "live", "total_steps": 2})
    run_dir = run(recipe, run_dir=tmp_path / "live", live=False)
    # make it look like a run in progress: no final snapshot yet, its driver (us) alive
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    kept = [x for x in lines if '"finished":true' not in x]
    assert len(kept) == len(lines) - 1
    (run_dir / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    info = json.loads((run_dir / "monitor.json").read_text())
    (run_dir / "monitor.json").write_text(json.dumps(info | {"state": "running", "pid": os.getpid()}))
    assert load_run(run_dir).state == "running"
    assert "<p>running; report written" in write_report(run_dir).read_text()
    (run_dir / "monitor.json").write_text(json.dumps(info | {"state": "running", "pid": 2**22 + 7}))
    assert load_run(run_dir).state == "stopped"  # its driver is gone: crashed, not running

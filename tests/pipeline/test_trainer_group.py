"""The trainer group under faults: a killed rank ends the run, naming it; resume with fewer ranks."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from .conftest import assert_exactly_once, ledger
from .test_faults import _checkpoints, _cli, _recipe_file, _start, _wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _rank_pid(run_dir, rank: int) -> int | None:
    """The process of trainer rank ``rank``: the one holding its spans file open."""
    target = str(run_dir / "spans" / f"trainer-{rank}.jsonl")
    for p in psutil.process_iter(["cmdline"]):
        try:
            if (p.info["cmdline"] or [""])[0].startswith("ray::") and any(f.path == target for f in p.open_files()):
                return p.pid
        except psutil.Error:
            continue
    return None


def test_killed_trainer_rank_ends_the_run_then_one_rank_resumes(recipe_factory, tmp_path):
    path = _recipe_file(
        recipe_factory, tmp_path,
        run={"name": "ranks", "total_steps": 14, "checkpoint_every": 2},
        model={"name": "synthetic", "path": "synthetic", "options": {"dim": 8, "steps": 3, "rollout_s": 0.02}},
        pipeline={"backend": "ray", "trainer_workers": 2, "tick_s": 0.2})
    run_dir = tmp_path / "run"
    proc = _start("run", str(path), "--run-dir", str(run_dir), "--no-live")
    _wait_for(lambda: len(_checkpoints(run_dir)) >= 2, proc)
    pid = _rank_pid(run_dir, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    t0 = time.time()
    code = proc.wait(timeout=90)
    elapsed = time.time() - t0
    out = proc.stdout.read().decode()
    assert code == 1, out[-3000:]
    errors = [x for x in out.splitlines() if x.startswith("error:")]
    assert errors and errors[0].startswith("error: trainer/1: "), out[-3000:]
    assert elapsed < 60, elapsed
    before = {r["sample_id"] for r in ledger(run_dir)}
    resumed = _cli("run", "--resume", str(run_dir), "--set", "pipeline.trainer_workers=1", "--no-live")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    rows = assert_exactly_once(run_dir)
    assert before <= {r["sample_id"] for r in rows}
    assert max(r["trained_at_version"] for r in rows if r["status"] == "trained") == 13

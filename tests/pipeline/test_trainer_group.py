"""The trainer group under faults: a killed rank ends the run, naming it; resume with fewer ranks."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from .conftest import assert_exactly_once, ledger
from .test_faults import _checkpoints, _cli, _recipe_file, _start, _wait_for


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


@pytest.mark.ray
@pytest.mark.slow
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


@pytest.mark.ray
def test_more_gpus_than_the_cluster_has_fails_before_any_actor_starts(recipe_factory, tmp_path):
    path = _recipe_file(recipe_factory, tmp_path,
                        pipeline={"backend": "ray", "trainer_workers": 2, "trainer": {"num_gpus": 1}})
    t0 = time.time()
    out = _cli("run", str(path), "--run-dir", str(tmp_path / "run"), "--no-live")
    assert out.returncode == 2, out.stderr
    assert "pipeline.trainer: 2 workers x 1 GPU = 2 GPU, but the Ray cluster has 0 GPU" in out.stderr
    assert "Traceback" not in out.stderr and time.time() - t0 < 60
    assert not (tmp_path / "run" / "groups.jsonl").exists()  # nothing started, nothing journaled


def test_check_fits_counts_every_stage_together():
    from unirl_stream.api import UserInputError
    from unirl_stream.pipeline.placement import check_fits
    from unirl_stream.stages.config import PipelineConfig, Placement, TrainerPlacement

    p = PipelineConfig(rollout_workers=6, rollout=Placement(num_gpus=1), trainer_workers=2,
                       trainer=TrainerPlacement(num_gpus=1), reward=Placement(num_gpus=0.5))
    check_fits(p, {"GPU": 8.5, "CPU": 2}, "r.toml")
    with pytest.raises(UserInputError, match=r"the stages ask for 8.5 GPU together \(rollout 6 x 1, reward 1 x 0.5, "
                                             r"trainer 2 x 1\), but the Ray cluster has 8 GPU"):
        check_fits(p, {"GPU": 8, "CPU": 2}, "r.toml")

"""Run-level failures: a killed run resumes; an unreachable store fails fast, named."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from unirl_stream.pipeline.driver import run
from unirl_stream.recipe import to_toml

from .conftest import assert_exactly_once, ledger


def _checkpoints(run_dir):
    root = run_dir / "checkpoints"
    return sorted(root.glob("step_*")) if root.exists() else []


@pytest.mark.slow
def test_killed_run_resumes_from_checkpoint(recipe_factory, tmp_path):
    recipe = recipe_factory(
        run={"name": "killed", "total_steps": 40, "checkpoint_every": 2},
        model={"name": "synthetic", "path": "synthetic",
               "options": {"dim": 8, "steps": 3, "rollout_s": 0.01}},
    )
    path = tmp_path / "recipe.toml"
    path.write_text(to_toml(recipe))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "unirl_stream.cli", "run", str(path), "--run-dir", str(run_dir), "--no-live"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(_checkpoints(run_dir)) < 3:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # no clean-up of any kind
    proc.wait()
    assert len(_checkpoints(run_dir)) >= 3, proc.stdout.read().decode()[-2000:]
    state = json.loads((_checkpoints(run_dir)[-1] / "state.json").read_text())
    before = {r["sample_id"] for r in ledger(run_dir)}

    out = subprocess.run([sys.executable, "-m", "unirl_stream.cli", "run", str(path), "--resume", str(run_dir),
                          "--no-live"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = assert_exactly_once(run_dir)
    assert before <= {r["sample_id"] for r in rows}
    trained = [r for r in rows if r["status"] == "trained"]
    # the resumed run continued at the checkpoint's version and reached the last step
    resumed = [r for r in trained if r["sample_id"] not in before]
    assert min(r["trained_at_version"] for r in resumed) == state["version"]
    assert max(r["trained_at_version"] for r in trained) == 39
    assert {r["trained_at_version"] for r in resumed} == set(range(state["version"], 40))
    lost = [r for r in rows if r["reason"].startswith("interrupted")]
    assert all(r["status"] == "dropped" for r in lost)


def test_unreachable_store_fails_fast_with_address(recipe_factory, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    recipe = recipe_factory(store={"backend": "mooncake", "options": {"master_address": f"127.0.0.1:{port}"}})
    t0 = time.time()
    with pytest.raises(Exception, match=f"127.0.0.1:{port}"):
        run(recipe, run_dir=tmp_path / "nostore", live=False)
    assert time.time() - t0 < 30

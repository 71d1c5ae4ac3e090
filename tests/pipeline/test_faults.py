"""Exactly once whatever dies: a killed driver, a second writer, a stall, a resume.

Every test here drives the real CLI in a subprocess (the way a user runs it) and checks the
run directory's journals afterwards: every started sample id ends in ``ledger.jsonl``
exactly once, and no process of a killed run survives it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from unirl_stream.recipe import to_toml

from .conftest import assert_exactly_once, ledger

PLUGINS_SRC = Path(__file__).parent / "plugins_src"
CLI = [sys.executable, "-m", "unirl_stream.cli"]


def _cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)


def _checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    return sorted(root.glob("step_*")) if root.exists() else []


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not cond():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    assert cond(), "the run never reached the point to kill it at"


def _tree(pid: int) -> list[tuple[int, float]]:
    root = psutil.Process(pid)
    out = []
    for p in [root, *root.children(recursive=True)]:
        try:
            out.append((p.pid, p.create_time()))
        except psutil.NoSuchProcess:  # a short-lived child ended while we listed
            continue
    return out


def _alive_keys(procs: list[tuple[int, float]]) -> list[tuple[int, float]]:
    out = []
    for pid, created in procs:
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                out.append((pid, created))
        except psutil.NoSuchProcess:
            continue
    return out


def _alive(procs: list[tuple[int, float]]) -> list[str]:
    out = []
    for pid, _ in _alive_keys(procs):
        try:
            out.append(f"{pid} {' '.join(psutil.Process(pid).cmdline())[:80]}")
        except psutil.NoSuchProcess:
            continue
    return out


def _recipe_file(recipe_factory, tmp_path: Path, **sections) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(to_toml(recipe_factory(**sections)))
    return path


# Where the driver is SIGKILLed, one point after another in the same run directory: the fresh
# run before its first checkpoint (its resume starts from scratch, all earlier ids stay final),
# that resume mid-run, and that resume's resume (from a checkpoint) in the last steps; a last
# resume finishes the run. Each condition asks for progress the previous kill's resume made.
KILL_POINTS = {
    "before_checkpoint": lambda d, ckpts: (d / "ledger.jsonl").exists() and len(ledger(d)) >= 8
    and not _checkpoints(d),
    "mid_run": lambda d, ckpts: len(_checkpoints(d)) >= 2,
    "last_steps": lambda d, ckpts: len(_checkpoints(d)) >= max(3, ckpts + 1),
}


def _sigkill_driver(proc: subprocess.Popen, watched: list, what: str) -> None:
    """SIGKILL the driver alone (no clean-up of any kind); none of ``watched`` may outlive it
    by more than 30 s (``what`` says which they are when some do)."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and _alive(watched):
        time.sleep(0.5)
    assert not _alive(watched), f"{what}: {_alive(watched)}"


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(420)
def test_sigkilled_driver_leaves_nothing_and_resumes_exactly_once(recipe_factory, tmp_path):
    # The three kill points once were three tests, each a run and its resume (6 CLI runs with a
    # local Ray cluster each, ~150 s on 2 cores); chained in one run directory they take 4 runs
    # (~80 s), and every kill point still gets its own checks: no survivor, no sample id ended
    # twice, every id ended before the kill stays final, a resume that gets past the kill point.
    path = _recipe_file(
        recipe_factory, tmp_path,
        run={"name": "kill", "total_steps": 8, "checkpoint_every": 2},
        model={"name": "synthetic", "path": "synthetic", "options": {"dim": 8, "steps": 3, "rollout_s": 0.02,
                                                                     "train_s": 0.01}},
        pipeline={"backend": "ray", "tick_s": 0.2})
    run_dir = tmp_path / "run"
    proc = _start("run", str(path), "--run-dir", str(run_dir), "--no-live")
    befores: dict[str, set[str]] = {}
    ckpts = 0
    for point, reached in KILL_POINTS.items():
        _wait_for(lambda reached=reached, ckpts=ckpts: reached(run_dir, ckpts), proc)
        procs = _tree(proc.pid)
        assert len(procs) > 3, point  # the driver, its reaper and the local Ray cluster
        _sigkill_driver(proc, procs, f"{point}: still alive 30 s after the driver's SIGKILL")
        ckpts = len(_checkpoints(run_dir))
        ids = [r["sample_id"] for r in ledger(run_dir)]
        assert len(ids) == len(set(ids)), f"{point}: a sample id ended twice"
        for earlier, before in befores.items():
            assert before <= set(ids), f"{point}: an id ended before the {earlier} kill is gone"
        befores[point] = set(ids)
        proc = _start("run", "--resume", str(run_dir), "--no-live")  # no recipe: the saved one
    out = proc.communicate(timeout=240)[0].decode()
    assert proc.returncode == 0, out[-3000:]
    rows = assert_exactly_once(run_dir)
    for point, before in befores.items():
        assert before <= {r["sample_id"] for r in rows}, f"an id ended before the {point} kill is gone"
    trained = [r for r in rows if r["status"] == "trained"]
    assert max(r["trained_at_version"] for r in trained) == 7  # reached the last step
    assert all(r["reason"] for r in rows if r["status"] == "dropped")


def test_second_writer_refused_while_the_run_lives(recipe_factory, tmp_path):
    path = _recipe_file(
        recipe_factory, tmp_path,
        run={"name": "busy", "total_steps": 30},
        model={"name": "synthetic", "path": "synthetic", "options": {"dim": 8, "steps": 3, "rollout_s": 0.02}})
    run_dir = tmp_path / "run"
    proc = _start("run", str(path), "--run-dir", str(run_dir), "--no-live")
    try:
        _wait_for(lambda: (run_dir / "ledger.jsonl").exists() and len(ledger(run_dir)) >= 8, proc)
        for args in (["run", "--resume", str(run_dir), "--no-live"],
                     ["run", str(path), "--resume", str(run_dir), "--no-live"],
                     ["run", str(path), "--run-dir", str(run_dir), "--no-live"]):
            t0 = time.time()
            second = _cli(*args, timeout=60)
            assert second.returncode == 2, second.stderr
            assert f"in use by pid {proc.pid} on host" in second.stderr, second.stderr
            assert time.time() - t0 < 15
            assert proc.poll() is None  # the first run is unharmed
        assert proc.wait(timeout=240) == 0, proc.stdout.read().decode()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    rows = assert_exactly_once(run_dir)
    assert len([r for r in rows if r["status"] == "trained"]) == 30 * 2 * 4
    # The finished run's lock file names a dead holder: it is no lock, the next resume takes it.
    assert json.loads((run_dir / "run.lock").read_text())["pid"] == proc.pid
    assert _cli("run", "--resume", str(run_dir), "--no-live").returncode == 0


def test_resume_with_another_recipe_names_the_first_differing_key(recipe_factory, tmp_path):
    path = _recipe_file(recipe_factory, tmp_path, run={"name": "same", "total_steps": 2})
    run_dir = tmp_path / "run"
    assert _cli("run", str(path), "--run-dir", str(run_dir), "--no-live").returncode == 0
    rows = ledger(run_dir)
    other = tmp_path / "other.toml"
    other.write_text(path.read_text().replace("total_steps = 2", "total_steps = 3"))
    out = _cli("run", str(other), "--resume", str(run_dir), "--no-live")
    assert out.returncode == 2
    assert "differs from the run's saved recipe.toml at run.total_steps" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert ledger(run_dir) == rows  # nothing was written
    # the same recipe (or none), with --set to extend it, continues the run
    out = _cli("run", str(path), "--resume", str(run_dir), "--set", "run.total_steps=3", "--no-live")
    assert out.returncode == 0, out.stderr[-2000:]
    assert max(r["trained_at_version"] for r in assert_exactly_once(run_dir) if r["status"] == "trained") == 2
    assert "total_steps = 3" in (run_dir / "recipe.toml").read_text()


@pytest.fixture
def stall_plugin_env(tmp_path):
    """The never-producing stage, discoverable through an entry point in a subprocess."""
    info = tmp_path / "site" / "unirl_stream_stall_plugin-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: unirl-stream-stall-plugin\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[unirl_stream.stages]\nnever_produces = stall_plugin:NeverProduces\n")
    path = os.pathsep.join([str(tmp_path / "site"), str(PLUGINS_SRC), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def test_starved_run_exits_1_with_the_diagnostic(stall_plugin_env, recipe_factory, tmp_path):
    path = _recipe_file(
        recipe_factory, tmp_path,
        pipeline={"train_requires": ["advantage", "verdict"], "stall_timeout_s": 4.0, "tick_s": 0.2,
                  "stages": [{"name": "never_produces"}]})
    t0 = time.time()
    out = _cli("run", str(path), "--run-dir", str(tmp_path / "run"), "--no-live", env=stall_plugin_env)
    elapsed = time.time() - t0
    assert out.returncode == 1, out.stderr
    line = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and "stalled: no stage made progress for" in line[0], out.stderr
    # the gate is full at version 0 (eta 1: 2 versions x 2 groups), the train task has nothing ready
    assert "gate: position 4, allowance 4, version 0" in line[0]
    assert "train 0/0" in line[0] and "trainer/0" in line[0] and "rollout/0" in line[0]
    assert elapsed < 4.0 + 10 + 10  # the timeout + 10 s, + start-up of the process (imports)
    assert_exactly_once(tmp_path / "run")


# A cluster in its own temp dir keeps its auth token there, where a driver started with the
# default temp dir does not look: token auth off for this loopback-only test cluster.
CLUSTER_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}


@pytest.fixture
def joined_cluster(tmp_path):
    """A Ray cluster the run joins with --address, as a user's long-lived cluster would be."""
    import re
    import shutil
    import socket
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "ray-start.log"
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay < 108 bytes
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={temp}"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True, env=CLUSTER_ENV)
    deadline = time.time() + 60
    address = None
    while time.time() < deadline and address is None and head.poll() is None:
        if found := re.search(r"ray start --address='([^']+)'", log.read_text()):
            address = found.group(1)
        time.sleep(0.2)
    assert address, log.read_text()[-2000:]
    yield address, head
    procs = []
    for pid, _ in _alive_keys(_tree(head.pid)):
        try:
            procs.append(psutil.Process(pid))
            procs[-1].terminate()
        except psutil.NoSuchProcess:  # ended between the listing and the signal
            continue
    for p in psutil.wait_procs(procs, timeout=3)[1]:  # a Ray worker may ignore SIGTERM: then SIGKILL
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue
    head.wait(timeout=10)
    shutil.rmtree(temp, ignore_errors=True)


def _actor_processes() -> dict[int, float]:
    out = {}
    for p in psutil.process_iter(["name", "cmdline", "create_time"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith(("ray::StageActor", "ray::Coordinator", "ray::IndexServer")) or ":StageActor" in cmd:
            out[p.pid] = p.info["create_time"]
    return out


@pytest.mark.slow
@pytest.mark.ray
def test_sigkilled_driver_on_a_joined_cluster_stops_only_its_own_actors(joined_cluster, recipe_factory, tmp_path):
    address, head = joined_cluster
    cluster = _tree(head.pid)
    path = _recipe_file(
        recipe_factory, tmp_path,
        run={"name": "joined", "total_steps": 200},
        model={"name": "synthetic", "path": "synthetic", "options": {"dim": 8, "steps": 3, "rollout_s": 0.02}},
        pipeline={"backend": "ray", "tick_s": 0.2})
    before = _actor_processes()
    run_dir = tmp_path / "run"
    proc = _start("run", str(path), "--run-dir", str(run_dir), "--no-live", "--address", address, env=CLUSTER_ENV)
    _wait_for(lambda: (run_dir / "ledger.jsonl").exists() and len(ledger(run_dir)) >= 8, proc)
    time.sleep(1.0)  # a few heartbeats: the driver has told its reaper the actors' pids
    actors = [(pid, t) for pid, t in _actor_processes().items() if pid not in before]
    assert len(actors) >= 4, actors  # 2 producers, a reward worker, a trainer (+ coordinator)
    _sigkill_driver(proc, actors, "the run's actors outlived its driver")
    # the cluster itself (gcs_server, raylet, ...) lives on for its other users
    assert len(_alive(cluster)) == len(cluster), set(map(str, cluster)) - set(_alive(cluster))

"""The pipeline on a real local Ray cluster: overlap, actor faults, exactly-once."""

from __future__ import annotations

import json
import threading
import time

import pytest

from unirl_stream.pipeline.driver import run

from .conftest import assert_exactly_once, ledger

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _spans(run_dir):
    out = {}
    for f in (run_dir / "spans").glob("*.jsonl"):
        for line in f.read_text().splitlines():
            s = json.loads(line)
            out.setdefault(s["stage"], []).append((s["t0"], s["t1"]))
    return out


def _overlap(a, b) -> float:
    return sum(max(0.0, min(x1, y1) - max(x0, y0)) for x0, x1 in a for y0, y1 in b)


def test_async_stages_overlap(ray_cluster, recipe_factory, tmp_path):
    recipe = recipe_factory(
        run={"total_steps": 6},
        model={"name": "synthetic", "path": "synthetic",
               "options": {"dim": 8, "steps": 3, "rollout_s": 0.03, "train_s": 0.02}},
        reward=[{"name": "synthetic", "options": {"cost_s": 0.02}}],
        pipeline={"backend": "ray", "reward_batch": 4},
    )
    run_dir = run(recipe, run_dir=tmp_path / "overlap", live=False)
    assert_exactly_once(run_dir)
    spans = _spans(run_dir)
    assert set(spans) >= {"rollout", "reward", "trainer"}
    assert _overlap(spans["rollout"], spans["trainer"]) > 0
    assert _overlap(spans["reward"], spans["trainer"]) > 0
    assert _overlap(spans["rollout"], spans["reward"]) > 0


def test_killed_producer_and_reward_worker_lose_nothing(ray_cluster, recipe_factory, tmp_path):
    import ray

    recipe = recipe_factory(
        run={"name": "faults", "total_steps": 12},
        model={"name": "synthetic", "path": "synthetic",
               "options": {"dim": 8, "steps": 3, "rollout_s": 0.02}},
        reward=[{"name": "synthetic", "options": {"cost_s": 0.01}}],
        store={"backend": "memory", "lease_s": 2.0},
        pipeline={"backend": "ray", "reward_batch": 4},
    )
    run_dir = tmp_path / "faults"
    result: dict = {}
    t = threading.Thread(target=lambda: result.setdefault("dir", run(recipe, run_dir=run_dir, live=False)))
    t.start()
    deadline = time.time() + 120
    while time.time() < deadline and len(ledger(run_dir) if (run_dir / "ledger.jsonl").exists() else []) < 16:
        time.sleep(0.2)
    t_kill = time.time()
    for name in ("rollout/0", "reward/0"):
        ray.kill(ray.get_actor(f"{run_dir.name}:{name}"), no_restart=False)
    t.join(timeout=240)
    assert not t.is_alive() and "dir" in result
    # the restarted actors came back and worked (their span files continue after the kill)
    for stage in ("rollout-0", "reward-0"):
        spans = [json.loads(x) for x in (run_dir / "spans" / f"{stage}.jsonl").read_text().splitlines()]
        assert any(s["t0"] > t_kill for s in spans), f"{stage} did no work after being killed"
    rows = assert_exactly_once(run_dir)
    trained_versions = {r["trained_at_version"] for r in rows if r["status"] == "trained"}
    assert trained_versions == set(range(12))

"""The pipeline end to end in-process (threads, memory store, synthetic policy)."""

from __future__ import annotations

import pytest

from unirl_stream.pipeline.driver import RunFailed, run

from .conftest import assert_exactly_once, ledger


@pytest.mark.parametrize("eta", [0, 1, 2])
def test_staleness_bound_and_exactly_once(recipe_factory, tmp_path, eta):
    recipe = recipe_factory(run={"name": f"eta{eta}", "total_steps": 21},
                            pipeline={"max_staleness": eta})
    run_dir = run(recipe, run_dir=tmp_path / f"eta{eta}", live=False)
    rows = assert_exactly_once(run_dir)
    trained = [r for r in rows if r["status"] == "trained"]
    assert len(trained) == 21 * 2 * 4  # every step trains groups_per_step full groups
    assert max(r["staleness"] for r in trained) <= eta
    assert all(r["trained_at_version"] - r["behavior_version"] == r["staleness"] for r in trained)
    stale = [r for r in rows if r["reason"].startswith("stale")]
    assert len(stale) <= 0.05 * len(rows)
    # versions advance one per step (publish_every = 1), and training saw all of them
    assert {r["trained_at_version"] for r in trained} == set(range(21))


def test_nan_reward_fails_naming_the_sample(recipe_factory, tmp_path):
    recipe = recipe_factory(reward=[{"name": "synthetic", "options": {"nan_every": 5}}])
    with pytest.raises(RunFailed, match=r"reward synthetic returned nan for sample [^ ]+::sample:\d"):
        run(recipe, run_dir=tmp_path / "nan", live=False)
    assert_exactly_once(tmp_path / "nan")


def test_nan_reward_drop_records_reason(recipe_factory, tmp_path):
    recipe = recipe_factory(reward=[{"name": "synthetic", "on_nan": "drop", "options": {"nan_every": 5}}])
    run_dir = run(recipe, run_dir=tmp_path / "drop", live=False)
    rows = assert_exactly_once(run_dir)
    nan_rows = [r for r in rows if "returned nan" in r["reason"]]
    assert nan_rows and all(r["status"] == "dropped" for r in nan_rows)
    assert len([r for r in rows if r["status"] == "trained"]) >= 6 * 8 - len(nan_rows)


def test_learning_signal_synthetic(recipe_factory, tmp_path):
    """Brightness of the synthetic policy's image rises when trained on it."""
    recipe = recipe_factory(run={"total_steps": 30}, pipeline={"rollout_workers": 1})
    rows = ledger(run(recipe, run_dir=tmp_path / "learn", live=False))
    trained = sorted((r for r in rows if r["status"] == "trained"), key=lambda r: r["trained_at_version"])
    q = len(trained) // 4
    first = sum(r["reward"] for r in trained[:q]) / q
    last = sum(r["reward"] for r in trained[-q:]) / q
    assert last > first + 0.05, (first, last)


def test_resume_continues_version(recipe_factory, tmp_path):
    recipe = recipe_factory(run={"total_steps": 4, "checkpoint_every": 2})
    run_dir = run(recipe, run_dir=tmp_path / "r", live=False)
    first = ledger(run_dir)
    # pretend the run was meant to be longer: resume continues from step 4 / version 4
    saved = (run_dir / "recipe.toml").read_text().replace("total_steps = 4", "total_steps = 7")
    (run_dir / "recipe.toml").write_text(saved)
    run(resume=run_dir, live=False)  # the saved (edited) recipe, no recipe given
    rows = assert_exactly_once(run_dir)
    trained_versions = sorted({r["trained_at_version"] for r in rows if r["status"] == "trained"})
    assert trained_versions == list(range(7))
    assert len(rows) > len(first)

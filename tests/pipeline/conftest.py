"""Recipes for pipeline tests: the synthetic policy (fast, real log-probs) by default."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from unirl_stream.recipe import Recipe, decode
from unirl_stream.tomlio import apply_overrides


def synthetic_recipe(tmp_path: Path, **sections: dict[str, Any]) -> Recipe:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"prompt number {i}" for i in range(8)) + "\n")
    raw: dict[str, Any] = {
        "run": {"name": "t", "seed": 1, "total_steps": 6, "output_dir": str(tmp_path / "runs")},
        "model": {"name": "synthetic", "path": "synthetic", "options": {"dim": 8, "steps": 3}},
        "data": {"prompts": str(prompts)},
        "sampling": {"samples_per_prompt": 4},
        "algorithm": {"lr": 0.05, "clip_range": 0.2, "updates_per_batch": 2, "adv_clip": 5.0},
        "reward": [{"name": "synthetic"}],
        "store": {"backend": "memory", "lease_s": 5.0},
        "pipeline": {"backend": "local", "max_staleness": 1, "rollout_workers": 2,
                     "reward_workers": 1, "groups_per_step": 2, "reward_batch": 8, "tick_s": 0.2},
        "logging": {"live": False},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(raw.get(name), dict):
            raw[name].update(values)
        else:
            raw[name] = values
    recipe = decode(raw, "test-recipe")
    return recipe


def overridden(recipe_toml: str, *sets: str) -> dict[str, Any]:
    raw = tomllib.loads(recipe_toml)
    apply_overrides(raw, list(sets))
    return raw


def ledger(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines() if x.strip()]


def journal_ids(run_dir: Path) -> set[str]:
    ids = set()
    for line in (run_dir / "groups.jsonl").read_text().splitlines():
        g = json.loads(line)
        ids.update(f"{g['group']}::sample:{k}" for k in range(g["size"]))
    return ids


def assert_exactly_once(run_dir: Path) -> list[dict[str, Any]]:
    rows = ledger(run_dir)
    ids = [r["sample_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a sample id ended twice"
    assert set(ids) == journal_ids(run_dir), "a started sample id has no ledger row"
    return rows


@pytest.fixture
def recipe_factory(tmp_path: Path):
    def make(**sections: dict[str, Any]) -> Recipe:
        return synthetic_recipe(tmp_path, **sections)

    return make

"""Every recipe shipped in recipes/ decodes, validates and round-trips, so none can rot.

The two headline recipes are also pinned to what they promise (quickstart: tiny CPU run;
wan22_dancegrpo: the published DanceGRPO Wan2.2 values plus our documented departures).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import msgspec
import pytest

from unirl_stream.algorithms.schedule import HIGH, LOW, expert_of_steps, sigma_grid
from unirl_stream.algorithms.selection import reachable_steps
from unirl_stream.data import load_prompts
from unirl_stream.recipe import Recipe, decode, load, to_toml
from unirl_stream.validate import check_recipe, load_checked

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
ALL = sorted(RECIPES.glob("*.toml"))


def test_the_two_headline_recipes_exist() -> None:
    assert {p.name for p in ALL} >= {"quickstart.toml", "wan22_dancegrpo.toml"}


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_recipe_decodes_validates_and_round_trips(path: Path) -> None:
    recipe = load(path)
    warnings = check_recipe(recipe, str(path), check_weights=False)
    # Only the weights may be missing on a test machine; nothing else may warn.
    assert all(": model.path: " in w for w in warnings), warnings
    again = decode(tomllib.loads(to_toml(recipe)), "printed")
    assert msgspec.structs.replace(again, data=recipe.data, source=recipe.source) == recipe
    assert load_prompts(recipe.resolve(recipe.data.prompts))


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_recipe_starts_with_what_hardware_command(path: Path) -> None:
    head = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        head.append(line)
    text = "\n".join(head)
    assert "What:" in text and "Hardware:" in text and "Command:" in text, path.name
    assert f"unirl-stream run recipes/{path.name}" in text


def test_quickstart_is_the_tiny_cpu_run() -> None:
    r = load_checked(RECIPES / "quickstart.toml")[0]  # full check: the tiny model needs no download
    assert (r.model.name, r.model.path, r.model.dtype, r.model.device) == (
        "wan22", "tiny:two_expert", "float32", "cpu")
    s = r.sampling
    assert (s.height, s.width, s.num_frames, s.num_inference_steps) == (32, 32, 5, 8)
    assert (s.guidance_scale, s.samples_per_prompt) == (1.0, 8)
    assert (r.model.lora.rank, r.model.lora.alpha, sorted(r.model.lora.experts)) == (8, 16.0, ["high", "low"])
    assert r.store.backend == "memory" and [x.name for x in r.reward] == ["jpeg_compressibility"]
    p = r.pipeline
    assert (p.mode, p.max_staleness, p.rollout_workers, p.reward_workers, p.groups_per_step) == (
        "async", 1, 2, 1, 2)
    assert len(load_prompts(r.resolve(r.data.prompts))) == 16
    steps = reachable_steps(s.sde, s.num_inference_steps)
    assert set(expert_of_steps(sigma_grid(s.num_inference_steps, s.shift), 0.875, steps)) == {HIGH, LOW}


def test_wan22_recipe_mirrors_the_published_setup() -> None:
    r: Recipe = load(RECIPES / "wan22_dancegrpo.toml")
    assert (r.model.name, r.model.path, r.model.dtype) == (
        "wan22", "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "bfloat16")
    assert r.model.boundary_ratio is None  # 0.875 comes from the checkpoint
    s = r.sampling
    assert (s.shift, s.num_inference_steps, s.eta, s.guidance_scale, s.samples_per_prompt) == (
        5.0, 20, 0.7, 1.0, 16)
    lora = r.model.lora
    assert (lora.rank, lora.alpha, sorted(lora.experts)) == (64, 128.0, ["high", "low"])
    assert lora.target_modules == ["to_q", "to_k", "to_v", "to_out.0"]
    a = r.algorithm
    assert (a.lr, a.clip_range, a.updates_per_batch, a.max_grad_norm, a.kl_coef) == (
        3e-4, 1e-4, 2, 1.0, 0.0)
    assert [x.name for x in r.reward] == ["video_pickscore"]
    # Our departure: bf16 producer adapters, so the objective replays its own proximal pass.
    assert (a.name, lora.producer_dtype, r.model.compile) == ("decoupled_grpo", "model", "auto")
    # Our departure: real videos (4k+1 frames), sized for 80 GB GPUs.
    assert s.num_frames > 1 and (s.num_frames - 1) % 4 == 0
    # SDE steps must reach both experts (the checkpoint's boundary ratio is 0.875).
    steps = reachable_steps(s.sde, s.num_inference_steps)
    experts = expert_of_steps(sigma_grid(s.num_inference_steps, s.shift), 0.875, steps)
    assert set(experts) == {HIGH, LOW}
    assert len(load_prompts(r.resolve(r.data.prompts))) == 48


def test_validate_wan22_through_the_cli_without_weights() -> None:
    """The acceptance line: `unirl-stream validate recipes/wan22_dancegrpo.toml` exits 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "unirl_stream.cli", "validate", str(RECIPES / "wan22_dancegrpo.toml")],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    assert tomllib.loads(proc.stdout)["model"]["path"] == "Wan-AI/Wan2.2-T2V-A14B-Diffusers"
    assert "Traceback" not in proc.stderr
    # Without the checkpoint the only stderr output is the weights warning, naming the path.
    for line in proc.stderr.splitlines():
        assert line.startswith("warning: ") and "Wan-AI/Wan2.2-T2V-A14B-Diffusers" in line

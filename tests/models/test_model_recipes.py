"""The model-zoo recipes are pinned to what they promise (every recipe also passes
tests/test_recipes.py: decode, validate, round trip, header)."""

from __future__ import annotations

from pathlib import Path

from unirl_stream.data import load_prompts
from unirl_stream.models.sd3 import LORA_TARGETS
from unirl_stream.recipe import load
from unirl_stream.validate import load_checked

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_sd3_recipe_mirrors_the_reference_flowgrpo_setup() -> None:
    r = load(RECIPES / "sd3_flowgrpo_pickscore.toml")
    assert (r.model.name, r.model.path, r.model.dtype) == ("sd3", "stabilityai/stable-diffusion-3.5-medium", "bfloat16")
    s = r.sampling
    assert (s.height, s.width, s.num_frames, s.num_inference_steps, s.shift, s.eta) == (512, 512, 1, 10, 3.0, 0.7)
    assert (s.samples_per_prompt, s.sde.kernel, s.sde.selection, s.sde.k, s.sde.fraction) == (
        16, "flow_sde", "random_k", 3, (0.0, 0.5))
    lora = r.model.lora
    assert (lora.rank, lora.alpha, lora.target_modules) == (32, 64.0, LORA_TARGETS)
    a = r.algorithm
    assert (a.name, a.lr, a.clip_range, a.kl_coef) == ("grpo", 3e-4, 1e-4, 0.0)
    assert lora.producer_dtype == lora.trainer_dtype == "model"  # one numerics: plain GRPO is valid
    assert [x.name for x in r.reward] == ["pickscore"]
    assert len(load_prompts(r.resolve(r.data.prompts))) == 48


def test_quickstart_image_is_the_tiny_cpu_sd3() -> None:
    r = load_checked(RECIPES / "quickstart_image.toml")[0]  # full check: the tiny model needs no download
    assert (r.model.name, r.model.path, r.model.dtype, r.model.device) == ("sd3", "tiny:sd3", "float32", "cpu")
    assert (r.sampling.height, r.sampling.num_frames, r.sampling.guidance_scale) == (32, 1, 1.0)
    assert r.pipeline.backend != "local" and r.pipeline.max_staleness == 1
    assert [x.name for x in r.reward] == ["brightness"]


def test_models_md_is_generated_from_the_plugins() -> None:
    from unirl_stream.models import zoo

    assert zoo.OUTPUT.read_text(encoding="utf-8") == zoo.render(), (
        "docs/models.md is stale: run `python -m unirl_stream.models.zoo` and commit the result")
    assert "| `sd3` |" in zoo.render() and "| `wan22` |" in zoo.render()

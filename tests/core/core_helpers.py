"""Helpers shared by the core tests (importable as ``core_helpers``)."""

from __future__ import annotations

from typing import Any

import msgspec

from unirl_stream.api import Prompt
from unirl_stream.recipe import Recipe

HW = {"two_expert": 32, "ti2v": 64}  # smallest sizes each layout's VAE x patch allows


def make_recipe(layout: str = "two_expert", *, model: dict[str, Any] | None = None,
                sde: dict[str, Any] | None = None, seed: int = 0, **sampling: Any) -> Recipe:
    """A small recipe on a tiny model; keyword arguments override [sampling]."""
    hw = HW[layout]
    samp: dict[str, Any] = dict(height=hw, width=hw, num_frames=5, num_inference_steps=8,
                                guidance_scale=4.0, guidance_scale_2=3.0, eta=0.7,
                                samples_per_prompt=4, sde={"fraction": [0.0, 1.0], **(sde or {})})
    samp.update(sampling)
    mdl: dict[str, Any] = {"path": f"tiny:{layout}", "max_sequence_length": 8,
                           "options": {"decode_batch": 8},
                           "lora": {"rank": 4, "alpha": 8.0,
                                    "experts": ["high", "low"] if layout == "two_expert" else ["high"]}}
    for k, v in (model or {}).items():
        mdl[k] = {**mdl[k], **v} if isinstance(v, dict) else v
    raw = {"run": {"name": "core", "total_steps": 1, "seed": seed}, "model": mdl,
           "data": {"prompts": "prompts.txt"}, "sampling": samp}
    return msgspec.convert(raw, Recipe)


PROMPTS = [Prompt(id="core:0", text="a red cat"), Prompt(id="core:1", text="a dog running in snow"),
           Prompt(id="core:2", text="blue sky over the sea"), Prompt(id="core:3", text="an old tree")]


def build_policy(recipe: Recipe) -> Any:
    from unirl_stream.models.wan22 import Wan22Policy

    return Wan22Policy.from_recipe(recipe, device="cpu")


def perturb_lora(policy: Any, seed: int = 0, scale: float = 0.05) -> None:
    """Give the adapters non-trivial values (B starts at 0, which would hide LoRA bugs)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)

"""A Wan2.1-layout checkpoint (one transformer, 16 latent channels, no boundary) runs through
the ``wan22`` plugin: the tiny ``wan21`` model through the real loader, with replay parity."""

from __future__ import annotations

import json

import pytest
from models_helpers import PROMPTS, make_recipe, parity_gaps, perturb_lora

from unirl_stream.api import UserInputError
from unirl_stream.models.tiny import resolve_model_path
from unirl_stream.models.wan22 import Wan22Policy


def test_wan21_layout_loads_and_replays_within_1e5() -> None:
    path = resolve_model_path("tiny:wan21")
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline" and not (path / "transformer_2").exists()
    assert index.get("boundary_ratio") is None and not index["expand_timesteps"]
    recipe = make_recipe("wan22", "tiny:wan21", hw=32, num_frames=5, shift=5.0,
                         sde={"kernel": "dance_sde"}, lora={"experts": ["high", "low"]})
    policy = Wan22Policy.from_recipe(recipe, device="cpu")
    assert len(policy.experts) == 1 and list(policy.trained) == ["high"]  # "low" ignored: one transformer
    assert policy.latent_shape == (16, 2, 4, 4) and policy.media_shape == (5, 32, 32, 3)
    perturb_lora(policy)
    gaps = parity_gaps(policy, PROMPTS, [1, 2, 3, 4])
    assert max(gaps) <= 1e-5, gaps
    with pytest.raises(UserInputError, match=r"^sampling\.num_frames: expected 4k\+1 \(Wan's VAE"):
        Wan22Policy.check(make_recipe("wan22", "tiny:wan21", hw=32, num_frames=6))

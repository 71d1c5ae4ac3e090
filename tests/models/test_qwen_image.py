"""The ``qwen_image`` plugin on the tiny Qwen-Image: real loader, the dynamic-shift schedule
against the pipeline's own, padding invariance, replay parity, learning, frames check."""

from __future__ import annotations

import json

import msgspec
import pytest
import torch
from models_helpers import PROMPTS, assert_same_weights, make_recipe, parity_gaps, perturb_lora

from unirl_stream.algorithms.config import AlgorithmConfig
from unirl_stream.algorithms.losses import GRPO
from unirl_stream.algorithms.noise import sample_seed
from unirl_stream.algorithms.reference_loop import run_reference_loop
from unirl_stream.algorithms.train import make_optimizer
from unirl_stream.api import UserInputError
from unirl_stream.models.qwen_image import LORA_TARGETS, QwenImagePolicy
from unirl_stream.models.qwen_image_tiny import build_pipeline
from unirl_stream.models.tiny import resolve_model_path


def _policy(targets: list[str] = LORA_TARGETS, seq: int = 16, **kw: object) -> QwenImagePolicy:
    r = make_recipe("qwen_image", "tiny:qwen_image", lora={"target_modules": targets}, **kw)
    r = msgspec.structs.replace(r, model=msgspec.structs.replace(r.model, max_sequence_length=seq))
    return QwenImagePolicy.from_recipe(r, device="cpu")


def test_tiny_qwen_image_loads_through_real_loader_and_pins_the_pipelines_schedule() -> None:
    index = json.loads((resolve_model_path("tiny:qwen_image") / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImagePipeline"
    assert index["text_encoder"][1] == "Qwen2_5_VLForConditionalGeneration"
    ref, policy = build_pipeline(), _policy()
    loaded = policy.pipeline
    assert_same_weights(loaded, ref)
    with torch.no_grad():
        emb, _ = ref.encode_prompt(PROMPTS[1].text, max_sequence_length=16)
    cond = policy.embed([PROMPTS[1]])
    n = emb.shape[1]  # "a dog running in snow" + the template's tail after the dropped prefix
    assert n == 10 and cond["encoder_hidden_states"].shape == (1, 16, 32)
    assert cond["encoder_hidden_states_mask"][0].tolist() == [1] * n + [0] * (16 - n)
    torch.testing.assert_close(cond["encoder_hidden_states"][0, :n], emb[0], rtol=1e-5, atol=1e-6)
    # The pinned schedule is the pipeline's own for this geometry (dynamic shift, mu from
    # 4 x 4 = 16 image tokens, exponential time shift, shift_terminal 0.02), bit for bit.
    seen = {}

    def grab(pipe, i, t, kw):
        seen.setdefault("sigmas", pipe.scheduler.sigmas.clone())
        return {}

    ref(PROMPTS[0].text, height=64, width=64, num_inference_steps=6, output_type="latent",
        callback_on_step_end=grab, generator=torch.Generator().manual_seed(0))
    assert policy.sigmas == seen["sigmas"].tolist() and policy.sigmas[-2] == pytest.approx(0.02)
    assert policy.sigmas != sorted(policy.sigmas, reverse=True)[:1] * 7  # not a constant grid


def test_padding_to_max_sequence_length_leaves_the_velocity_unchanged() -> None:
    policy = _policy()
    cond = policy.embed([PROMPTS[0]])
    n = int(cond["encoder_hidden_states_mask"].sum())
    short = {k: v[:, :n] for k, v in cond.items()}
    x = torch.randn(1, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([700.0])
    with torch.no_grad():
        a, b = policy._forward(0, x, t, cond), policy._forward(0, x, t, short)
    assert (a - b).abs().max().item() <= 1e-5  # measured 0 to a few 1e-7


@pytest.mark.parametrize("kernel", ["flow_sde", "dance_sde"])
def test_replay_parity_fp32_with_true_cfg(kernel: str) -> None:
    policy = _policy(sde={"kernel": kernel, "selection": "random_k", "k": 3})
    perturb_lora(policy)
    gaps = parity_gaps(policy, PROMPTS, [11, 12, 13, 14])
    assert max(gaps) <= 1e-5, gaps  # measured <= 2.4e-7


def _brightness(media: torch.Tensor, prompts: object) -> torch.Tensor:
    return media.float().mean(dim=(1, 2, 3, 4)) / 255.0


def _gain(seed: int) -> float:
    """Brightness gain on 16 fixed eval seeds over 32 rounds, in units of the untrained
    policy's sample spread (without updates the gain is exactly 0)."""
    policy = _policy(targets=[*LORA_TARGETS, "proj_out"], seq=8, seed=seed, hw=32, num_inference_steps=4,
                     guidance_scale=1.0)
    alg = AlgorithmConfig(lr=1e-2, clip_range=0.2, updates_per_batch=2, micro_batch=16, adv_clip=None)
    opt = make_optimizer(policy, alg)
    seeds = [sample_seed(4321, f"eval:{k}") for k in range(16)]
    before = _brightness(policy.rollout([PROMPTS[0]] * 16, seeds)["media"], None)
    run_reference_loop(policy, GRPO(alg), opt, [PROMPTS[0]], _brightness, alg, rounds=32,
                       samples_per_prompt=16, run_seed=seed, rollout_batch=16, per_step=False)
    after = _brightness(policy.rollout([PROMPTS[0]] * 16, seeds)["media"], None)
    return float(after.mean() - before.mean()) / float(before.std())


@pytest.mark.timeout(120)
def test_qwen_image_learns_brightness_over_seeds() -> None:
    # Measured gain / spread for seeds 0-3: 5.1, 4.5, 1.05, 1.9 (lr 2e-2: 9.4, 4.1, 1.5, 0.64;
    # 16 rounds: -3.7 to 14.9; 8 samples a group: 0.3-5.4; 2 steps: -0.9-5.8). Qwen-Image's tiny model learns more slowly and more unevenly
    # than SD3's (3.8-9.9 in 16 rounds), so the margin is on the mean over seeds.
    gains = [_gain(seed) for seed in (0, 1, 2)]
    assert min(gains) > 0.5 and sum(gains) / len(gains) > 2.0, gains


def test_check_refuses_video_frames() -> None:
    with pytest.raises(UserInputError, match=r"^sampling\.num_frames: Qwen-Image generates images, expected 1"):
        QwenImagePolicy.check(make_recipe("qwen_image", "tiny:qwen_image", num_frames=9))

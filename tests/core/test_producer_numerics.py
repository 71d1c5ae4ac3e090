"""Producers with bf16 adapters, trainer with fp32 adapter GEMMs: the decoupled objective's
clipped ratio stays within the clip range at staleness 0, where GRPO's (against the producers'
log-probs) does not. With the default, both roles run bf16 adapter GEMMs (the trainer from fp32
masters): the same numerics, GRPO's ratio stays in range. Compilation stays off on CPU."""

from __future__ import annotations

import pytest
import torch
from core_helpers import PROMPTS, make_recipe, perturb_lora

from unirl_stream.algorithms.advantages import group_advantages
from unirl_stream.algorithms.config import AlgorithmConfig
from unirl_stream.algorithms.losses import GRPO, DecoupledGRPO
from unirl_stream.algorithms.train import train_on_batch
from unirl_stream.models.compile import compile_kind
from unirl_stream.models.wan22 import Wan22Policy

CLIP = 1e-4  # the published recipe's clip range


def _pair(layout: str, trainer_dtype: str = "float32") -> tuple[Wan22Policy, Wan22Policy]:
    recipe = make_recipe(layout, num_inference_steps=6,
                         model={"dtype": "bfloat16", "lora": {"trainer_dtype": trainer_dtype}})
    producer = Wan22Policy.from_recipe(recipe, device="cpu", role="producer")
    trainer = Wan22Policy.from_recipe(recipe, device="cpu", role="trainer")
    perturb_lora(trainer, scale=0.05)
    producer.load_weights(trainer.export_weights())
    return producer, trainer


@pytest.mark.parametrize("layout", ["two_expert", "ti2v"])
def test_decoupled_ratio_within_clip_range_with_bf16_producer_adapters(layout: str) -> None:
    producer, trainer = _pair(layout)
    assert {p.dtype for p in producer.trainable_parameters()} == {torch.bfloat16}
    assert {p.dtype for p in trainer.trainable_parameters()} == {torch.float32}
    assert not any(p.requires_grad for p in producer.trainable_parameters())
    batch = producer.rollout(PROMPTS, [11, 12, 13, 14])
    batch["advantage"] = group_advantages(torch.tensor([0.1, 0.5, 0.2, 0.9]), ["g"] * 4)
    with torch.no_grad():
        gap = (trainer.logprobs(PROMPTS, batch) - batch["log_probs"]).abs()
    # The producers' numerics differ: their log-probs are off by more than the clip range.
    assert float(gap.max()) > CLIP
    cfg = AlgorithmConfig(micro_batch=2, updates_per_batch=1, clip_range=CLIP, behavior_weight_cap=5.0)
    frozen = torch.optim.SGD(list(trainer.trainable_parameters()), lr=0.0)
    (grpo,) = train_on_batch(trainer, GRPO(cfg), frozen, PROMPTS, batch, cfg)
    (dec,) = train_on_batch(trainer, DecoupledGRPO(cfg), frozen, PROMPTS, batch, cfg)
    assert grpo.clip_frac > 0.1  # GRPO's trust region is mostly spent on rounding
    assert dec.clip_frac == 0.0
    assert 1 - CLIP <= dec.ratio_min <= dec.ratio_max <= 1 + CLIP
    assert dec.grad_norm > 0


@pytest.mark.timeout(120)
def test_default_trainer_runs_the_producers_numerics() -> None:
    producer, trainer = _pair("two_expert", trainer_dtype="model")
    assert {p.dtype for p in trainer.trainable_parameters()} == {torch.float32}  # masters
    batch = producer.rollout(PROMPTS, [11, 12, 13, 14])
    batch["advantage"] = group_advantages(torch.tensor([0.1, 0.5, 0.2, 0.9]), ["g"] * 4)
    with torch.no_grad():
        gap = (trainer.logprobs(PROMPTS, batch) - batch["log_probs"]).abs()
    # measured 0.0 (same kernels; only batch shapes differ between rollout and replay)
    assert float(gap.max()) < CLIP / 10
    cfg = AlgorithmConfig(micro_batch=2, updates_per_batch=1, clip_range=CLIP)
    frozen = torch.optim.SGD(list(trainer.trainable_parameters()), lr=0.0)
    (grpo,) = train_on_batch(trainer, GRPO(cfg), frozen, PROMPTS, batch, cfg)
    assert grpo.clip_frac == 0.0 and grpo.grad_norm > 0
    assert {p.grad.dtype for p in trainer.trainable_parameters()} == {torch.float32}


def test_producer_float32_option_keeps_the_trainer_numerics() -> None:
    recipe = make_recipe("ti2v", num_inference_steps=4,
                         model={"dtype": "bfloat16", "lora": {"producer_dtype": "float32", "trainer_dtype": "float32"}})
    producer = Wan22Policy.from_recipe(recipe, device="cpu", role="producer")
    assert {p.dtype for p in producer.trainable_parameters()} == {torch.float32}


def test_compilation_is_off_on_cpu_unless_asked() -> None:
    recipe = make_recipe("ti2v", num_inference_steps=4)
    assert recipe.model.compile == "auto"
    assert compile_kind(recipe.model, "cpu") == "off" and compile_kind(recipe.model, "cuda") == "regional"
    policy = Wan22Policy.from_recipe(recipe, device="cpu")
    assert policy.compiled == "off"
    assert all(getattr(b, "_compiled_call_impl", None) is None for b in policy.experts[0].blocks)

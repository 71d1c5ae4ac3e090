"""The train-step helper: proximal once, micro-batch/per-step accumulation, stats, versions."""

from __future__ import annotations

import pytest
import torch
from core_helpers import PROMPTS, build_policy, make_recipe, perturb_lora

from unirl_stream.algorithms.advantages import group_advantages
from unirl_stream.algorithms.config import AlgorithmConfig
from unirl_stream.algorithms.losses import GRPO, DecoupledGRPO
from unirl_stream.algorithms.train import train_on_batch


def _batch(policy):
    td = policy.rollout(PROMPTS, [21, 22, 23, 24])
    td["advantage"] = group_advantages(torch.tensor([0.1, 0.5, 0.2, 0.9]), ["g"] * 4)
    return td


def _grads(policy) -> list[torch.Tensor]:
    return [p.grad.clone() for p in policy.trainable_parameters()]


def test_micro_batches_and_per_step_chunks_give_the_full_batch_gradient() -> None:
    recipe = make_recipe("two_expert", num_inference_steps=6, sde={"fraction": [0.0, 0.7]})
    policy = build_policy(recipe)
    perturb_lora(policy)
    batch = _batch(policy)
    B, K = batch["log_probs"].shape
    # Off-policy: ratios spread over [e^-0.04, e^0.04] around 1, some outside the clip range.
    batch["log_probs"] = batch["log_probs"] + torch.linspace(-0.04, 0.04, B * K).view(B, K)
    sgd = torch.optim.SGD(list(policy.trainable_parameters()), lr=0.0)  # keep weights fixed
    full = train_on_batch(policy, GRPO(AlgorithmConfig(micro_batch=4, updates_per_batch=1, clip_range=0.02)),
                          sgd, PROMPTS, batch, AlgorithmConfig(micro_batch=4, updates_per_batch=1, clip_range=0.02),
                          per_step=False)
    g_full = _grads(policy)
    cfg = AlgorithmConfig(micro_batch=1, updates_per_batch=1, clip_range=0.02)
    chunked = train_on_batch(policy, GRPO(cfg), sgd, PROMPTS, batch, cfg, per_step=True)
    g_chunked = _grads(policy)
    assert any(g.abs().sum() > 0 for g in g_full)
    for a, b in zip(g_full, g_chunked, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    for name in ("loss", "clip_frac", "approx_kl", "ratio_mean", "ratio_max", "ratio_min", "grad_norm"):
        assert getattr(full[0], name) == pytest.approx(getattr(chunked[0], name), rel=1e-4, abs=1e-7), name
    assert 0 < full[0].clip_frac < 1


def test_proximal_once_then_updates_with_grad_and_version_bumps() -> None:
    policy = build_policy(make_recipe("ti2v", num_inference_steps=4, sde={"selection": "random_k", "k": 2}))
    batch = _batch(policy)
    calls: list[tuple[bool, int]] = []
    inner = policy.logprobs

    def spy(prompts, td, columns=None):
        calls.append((torch.is_grad_enabled(), len(prompts)))
        return inner(prompts, td, columns)

    policy.logprobs = spy
    cfg = AlgorithmConfig(micro_batch=2, updates_per_batch=2, clip_range=0.2, lr=1e-3)
    opt = torch.optim.AdamW(list(policy.trainable_parameters()), lr=cfg.lr)
    stats = train_on_batch(policy, DecoupledGRPO(cfg), opt, PROMPTS, batch, cfg)
    # 2 no-grad proximal calls (2 micro-batches), then 2 updates x 2 micro-batches x K=2 steps.
    assert calls == [(False, 2)] * 2 + [(True, 2)] * 8
    assert len(stats) == 2
    # First update is on-policy: ratios are exactly 1 up to replay rounding.
    assert stats[0].ratio_mean == pytest.approx(1.0, abs=1e-5) and stats[0].clip_frac == 0.0
    assert stats[0].loss == pytest.approx(-float(batch["advantage"].mean()), abs=1e-5)
    assert stats[1].ratio_max != stats[0].ratio_max  # the weights moved in between


def test_grpo_runs_no_proximal_pass_and_reference_only_with_kl() -> None:
    policy = build_policy(make_recipe("two_expert", num_inference_steps=4))
    perturb_lora(policy, scale=0.1)
    batch = _batch(policy)
    no_grad = {"logprobs": 0, "ref_logprobs": 0}
    for name in no_grad:
        inner = getattr(policy, name)

        def spy(prompts, td, columns=None, _inner=inner, _name=name):
            no_grad[_name] += not torch.is_grad_enabled()
            return _inner(prompts, td, columns)

        setattr(policy, name, spy)
    opt = torch.optim.SGD(list(policy.trainable_parameters()), lr=0.0)
    cfg = AlgorithmConfig(micro_batch=2, updates_per_batch=2)
    assert GRPO(cfg).needs == frozenset() and DecoupledGRPO(cfg).needs == {"proximal"}
    train_on_batch(policy, GRPO(cfg), opt, PROMPTS, batch, cfg)
    assert no_grad == {"logprobs": 0, "ref_logprobs": 0}
    kl = AlgorithmConfig(micro_batch=2, updates_per_batch=1, kl_coef=0.1)
    train_on_batch(policy, GRPO(kl), opt, PROMPTS, batch, kl)
    assert no_grad == {"logprobs": 0, "ref_logprobs": 2}
    train_on_batch(policy, DecoupledGRPO(kl), opt, PROMPTS, batch, kl)
    assert no_grad == {"logprobs": 2, "ref_logprobs": 4}


def test_kl_to_reference_and_input_errors() -> None:
    policy = build_policy(make_recipe("two_expert", num_inference_steps=4))
    perturb_lora(policy, scale=0.1)
    batch = _batch(policy)
    cfg = AlgorithmConfig(micro_batch=4, updates_per_batch=1, kl_coef=0.1)
    opt = torch.optim.SGD(list(policy.trainable_parameters()), lr=0.0)
    (st,) = train_on_batch(policy, GRPO(cfg), opt, PROMPTS, batch, cfg)
    assert st.kl_ref > 0 and st.grad_norm > 0
    del batch["advantage"]
    with pytest.raises(ValueError, match="no 'advantage' field"):
        train_on_batch(policy, GRPO(cfg), opt, PROMPTS, batch, cfg)

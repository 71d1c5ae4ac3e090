"""GRPO / decoupled objectives and advantages against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from unirl_stream.algorithms.advantages import group_advantages
from unirl_stream.algorithms.config import AlgorithmConfig
from unirl_stream.algorithms.losses import GRPO, DecoupledGRPO


def _cfg(**kw: object) -> AlgorithmConfig:
    return AlgorithmConfig(**{"clip_range": 0.2, "kl_coef": 0.0, **kw})


def test_grpo_clips_both_sides() -> None:
    # ratios 1.5 (A=+1: clipped at 1.2), 0.5 (A=-1: clipped at 0.8), 1.5 (A=-1: unclipped,
    # pessimistic side), 1.0 (A=+2).
    new = torch.log(torch.tensor([[1.5], [0.5], [1.5], [1.0]])).requires_grad_(True)
    old = torch.zeros(4, 1)
    adv = torch.tensor([1.0, -1.0, -1.0, 2.0])
    loss, st = GRPO(_cfg())(new, old, old, adv)
    assert loss.item() == pytest.approx((-1.2 + 0.8 + 1.5 - 2.0) / 4, abs=1e-6)
    loss.backward()
    # d/dnew of -r*A/4 = -A*r/4 where unclipped; 0 where the clipped branch is the minimum
    assert new.grad.flatten().tolist() == pytest.approx([0.0, 0.0, 1.5 / 4, -2.0 / 4], abs=1e-6)
    assert st.clip_frac == pytest.approx(0.75)
    assert (st.ratio_max, st.ratio_min) == pytest.approx((1.5, 0.5))
    assert st.ratio_mean == pytest.approx(1.125)
    logs = [math.log(1.5), math.log(0.5), math.log(1.5), 0.0]
    assert st.approx_kl == pytest.approx(0.5 * sum(x * x for x in logs) / 4, rel=1e-5)
    assert st.loss == pytest.approx(loss.item())


def test_kl_term_uses_k3_estimator() -> None:
    new = torch.zeros(2, 2)
    ref = torch.tensor([[0.1, -0.2], [0.0, 0.3]])
    loss, st = GRPO(_cfg(kl_coef=0.5))(new, new, new, torch.zeros(2), ref)
    kl = sum(math.exp(d) - d - 1 for d in [0.1, -0.2, 0.0, 0.3]) / 4
    assert st.kl_ref == pytest.approx(kl, rel=1e-5)
    assert loss.item() == pytest.approx(0.5 * kl, rel=1e-5)


def test_decoupled_equals_grpo_when_behaviour_is_proximal() -> None:
    g = torch.Generator().manual_seed(3)
    base = torch.randn(6, 4, generator=g) * 0.1
    beh = base - torch.randn(6, 4, generator=g) * 0.05
    adv = torch.randn(6, generator=g)
    ref = beh + 0.01
    grads, losses = [], []
    for obj in (GRPO(_cfg(kl_coef=0.1)), DecoupledGRPO(_cfg(kl_coef=0.1))):
        new = base.clone().requires_grad_(True)
        loss, _ = obj(new, beh, beh.clone(), adv, ref)
        loss.backward()
        losses.append(loss.item())
        grads.append(new.grad)
    assert losses[0] == losses[1]
    assert torch.equal(grads[0], grads[1])


def test_decoupled_clips_against_proximal_and_caps_behaviour_weight() -> None:
    new = torch.log(torch.tensor([[1.1], [1.1]]))
    prox = torch.zeros(2, 1)
    beh = torch.tensor([[-math.log(2.0)], [-math.log(10.0)]])  # weights 2 and 10 -> capped 5
    adv = torch.tensor([1.0, 1.0])
    loss, st = DecoupledGRPO(_cfg(behavior_weight_cap=5.0))(new, beh, prox, adv)
    assert loss.item() == pytest.approx(-(2.0 * 1.1 + 5.0 * 1.1) / 2, rel=1e-6)
    assert st.clip_frac == 0.0 and st.ratio_mean == pytest.approx(1.1)  # ratio vs proximal
    # Plain GRPO on the same data would clip both (ratios 2.2 and 11 vs behaviour).
    _, st_grpo = GRPO(_cfg())(new, beh, prox, adv)
    assert st_grpo.clip_frac == 1.0


def test_group_advantages_zscore_zero_variance_and_clip() -> None:
    r = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 7.0])
    groups = ["a", "a", "a", "b", "b", "c"]
    adv = group_advantages(r, groups)
    z = math.sqrt(1.5)
    assert adv.tolist() == pytest.approx([-z, 0.0, z, 0.0, 0.0, 0.0], abs=1e-6)
    assert torch.isfinite(adv).all()
    clipped = group_advantages(r, groups, clip=1.0)
    assert clipped.tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0], abs=1e-6)
    glob = group_advantages(r, groups, std_mode="global")
    std = float(r.std(unbiased=False))
    assert glob[:3].tolist() == pytest.approx([-1 / std, 0.0, 1 / std], rel=1e-5)
    given = group_advantages(r, groups, std_mode="global", global_std=2.0)
    assert given[:3].tolist() == pytest.approx([-0.5, 0.0, 0.5], rel=1e-6)
    assert group_advantages(torch.full((4,), 3.0), ["g"] * 4).tolist() == [0.0] * 4
    with pytest.raises(ValueError, match="non-finite"):
        group_advantages(torch.tensor([1.0, float("nan")]), ["g", "g"])

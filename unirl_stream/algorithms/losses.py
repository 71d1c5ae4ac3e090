"""GRPO objectives on per-step log-probs (training.Objective implementations).

Shapes: ``new``, ``behavior``, ``proximal``, ``ref`` [B, K] (per scored step), ``advantages``
[B]. Each (sample, step) is one term; the loss is their mean (so micro-batches and per-step
chunks combine by weighting with their element counts).

GRPO           r = exp(new - behavior);  L = -mean(min(r A, clip(r, 1-e, 1+e) A))
DecoupledGRPO  (AReaL) r = exp(new - proximal), w = min(exp(proximal - behavior), cap)
               (no gradient);  L = -mean(w * min(r A, clip(r, 1-e, 1+e) A)).
               When behaviour = proximal, w = 1 and r is GRPO's ratio: the same loss.
KL to reference (optional, coefficient beta): + beta * mean(exp(ref - new) - (ref - new) - 1),
the k3 estimator on the per-step (element-averaged) log-probs.

Each objective declares in ``needs`` the no-grad replays it reads (``train_on_batch``
computes nothing else): GRPO never reads the proximal log-probs; both read ``ref`` only
when ``kl_coef > 0``.

When producers and trainer differ in numerics (bf16 producer adapters, fp32 trainer
masters), the behaviour log-probs carry a rounding gap even at staleness 0. GRPO's ratio is
taken against them and a gap wider than ``clip_range`` clips every term; the decoupled
objective takes its ratio against the trainer's own proximal replay and sees the gap only
through the capped weight, so the validator requires it for bf16 producer adapters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unirl_stream.algorithms.base import ReplayObjective
from unirl_stream.algorithms.config import AlgorithmConfig
from unirl_stream.training import LossStats, ObjectiveInput, StepMeans

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from unirl_stream.recipe import Recipe


def ref_kl(loss: torch.Tensor, new: torch.Tensor, ref: torch.Tensor | None,
           kl_coef: float) -> tuple[torch.Tensor, float]:
    """``loss`` + kl_coef * k3(ref || new) on the per-step log-probs, and the KL's value."""
    if ref is None or kl_coef <= 0:
        return loss, 0.0
    d = ref.detach() - new
    kl = (d.exp() - d - 1.0).mean()
    return loss + kl_coef * kl, float(kl.detach())


def _surrogate(
    new: torch.Tensor, anchor: torch.Tensor, adv: torch.Tensor, clip: float,
    weight: torch.Tensor | None, ref: torch.Tensor | None, kl_coef: float,
) -> tuple[torch.Tensor, LossStats]:
    import torch

    if new.shape != anchor.shape or adv.shape != new.shape[:1]:
        raise ValueError(f"shapes: new {tuple(new.shape)}, old {tuple(anchor.shape)}, advantages {tuple(adv.shape)}")
    a = adv.to(new.dtype)[:, None]
    log_ratio = new - anchor.detach()
    ratio = torch.exp(log_ratio)
    unclipped = ratio * a
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * a
    per = -torch.minimum(unclipped, clipped)
    if weight is not None:
        per = per * weight.detach()
    loss, kl_val = ref_kl(per.mean(), new, ref, kl_coef)
    with torch.no_grad():  # one read-back for all of them: each float() would wait for the device
        values = torch.stack([loss.detach().float(), ((ratio - 1.0).abs() > clip).float().mean(),
                              (0.5 * (log_ratio**2).mean()).float(), ratio.mean().float(),
                              ratio.max().float(), ratio.min().float()]).tolist()
    names = ("loss", "clip_frac", "approx_kl", "ratio_mean", "ratio_max", "ratio_min")
    return loss, LossStats(**dict(zip(names, values, strict=True)), kl_ref=kl_val)


def behavior_weight(proximal: torch.Tensor, behavior: torch.Tensor, cap: float | None) -> torch.Tensor:
    """AReaL's off-policy correction: min(exp(proximal - behaviour), cap), no gradient."""
    w = (proximal.detach() - behavior.detach()).exp()
    return w if cap is None else w.clamp(max=cap)


class GRPO(ReplayObjective):
    """Clipped surrogate against the behaviour log-probs (what the sampler recorded)."""

    def __init__(self, cfg: AlgorithmConfig, recipe: Recipe | None = None) -> None:
        super().__init__(cfg, recipe)
        self.needs: frozenset[ObjectiveInput] = frozenset({"ref"} if cfg.kl_coef > 0 else ())

    def __call__(
        self, new: torch.Tensor, behavior: torch.Tensor, proximal: torch.Tensor | None,
        advantages: torch.Tensor, ref: torch.Tensor | None = None, means: StepMeans | None = None,
    ) -> tuple[torch.Tensor, LossStats]:
        return _surrogate(new, behavior, advantages, self.cfg.clip_range, None, ref, self.cfg.kl_coef)


class DecoupledGRPO(ReplayObjective):
    """AReaL's decoupled objective for stale samples: trust region around the proximal
    policy (the trainer's weights before this batch's first update), off-policy correction by
    the capped importance weight proximal / behaviour."""

    def __init__(self, cfg: AlgorithmConfig, recipe: Recipe | None = None) -> None:
        super().__init__(cfg, recipe)
        self.needs: frozenset[ObjectiveInput] = frozenset({"proximal", "ref"} if cfg.kl_coef > 0 else {"proximal"})

    def __call__(
        self, new: torch.Tensor, behavior: torch.Tensor, proximal: torch.Tensor | None,
        advantages: torch.Tensor, ref: torch.Tensor | None = None, means: StepMeans | None = None,
    ) -> tuple[torch.Tensor, LossStats]:
        if proximal is None:
            raise ValueError("decoupled_grpo: no proximal log-probs (train_on_batch reads `needs`)")
        w = behavior_weight(proximal, behavior, self.cfg.behavior_weight_cap)
        return _surrogate(new, proximal, advantages, self.cfg.clip_range, w, ref, self.cfg.kl_coef)

"""Flow-DPPO: a step-wise KL trust region with an asymmetric mask instead of ratio clipping.

Per (sample, scored step), with r = exp(new - proximal), A the advantage, mu the Gaussian means
of the step's transition under the current weights (autograd) and under the proximal weights
(the no-grad replay before the batch's first update), sigma_i -> sigma_{i+1} the step:

    s_i   = eta * sqrt(sigma_i / (1 - min(sigma_i, 0.99))) * sqrt(sigma_i - sigma_{i+1})
    KL    = mean_d (mu_new - mu_old)^2 / (2 s_i^2)          (``kl_std = "none"``: s_i = 1)
    keep  = not [ KL >= tau and ((r > 1 and A > 0) or (r < 1 and A < 0)) ]
    L     = mean( w * keep * (-A r) )

A term is masked only when it has left the trust region *and* its gradient would push it
further out (the ratio already moved the way the advantage pulls it); everything else keeps
the plain policy-gradient term -A r.

Departures from the reference implementation (../shared/REFERENCE.md): its old log-probs and
old means are the same no-grad pass at the pre-update weights because its loop is
synchronous. Here producers may lag, so, as in the decoupled objective, the ratio and the
means are taken against the trainer's proximal replay and the behaviour policy enters through
the capped importance weight w = min(exp(proximal - behaviour), behavior_weight_cap) (w = 1 at
staleness 0 with equal numerics: the reference's loss). s_i is the Flow-GRPO kernel's std
whatever the sampling kernel, as the reference does. Terms are fp32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from msgspec import Meta

from unirl_stream.algorithms.base import ReplayObjective
from unirl_stream.algorithms.config import AlgorithmConfig
from unirl_stream.algorithms.losses import behavior_weight, ref_kl
from unirl_stream.training import LossStats, ObjectiveInput, StepMeans

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from unirl_stream.recipe import Recipe


class FlowDPPOConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    kl_threshold: Annotated[float, Meta(gt=0)] = 1e-5
    """tau: the per-step KL above which a term that moves further out is masked."""
    kl_std: Literal["flow", "none"] = "flow"
    """Normalise the mean difference by the Flow-GRPO step std (``flow``) or not (``none``)."""


def trust_std(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float) -> torch.Tensor:
    """The reference's s_i = eta sqrt(sigma / (1 - min(sigma, 0.99))) sqrt(sigma - sigma')."""
    return eta * (sigma / (1.0 - sigma.clamp(max=0.99))).sqrt() * (sigma - sigma_next).sqrt()


class FlowDPPO(ReplayObjective):
    Config = FlowDPPOConfig

    def __init__(self, cfg: AlgorithmConfig, recipe: Recipe | None = None) -> None:
        super().__init__(cfg, recipe)
        self.eta = recipe.sampling.eta if recipe is not None else 1.0
        base: set[ObjectiveInput] = {"proximal", "proximal_means"}
        self.needs = frozenset(base | ({"ref"} if cfg.kl_coef > 0 else set()))

    def __call__(
        self, new: torch.Tensor, behavior: torch.Tensor, proximal: torch.Tensor | None,
        advantages: torch.Tensor, ref: torch.Tensor | None = None, means: StepMeans | None = None,
    ) -> tuple[torch.Tensor, LossStats]:
        if proximal is None or means is None:
            raise ValueError("flow_dppo: needs the proximal log-probs and step means (train_on_batch reads `needs`)")
        kl = self.step_kl(means)
        a = advantages.to(new.dtype)[:, None]
        ratio = (new - proximal.detach()).exp()
        outward = ((ratio > 1) & (a > 0)) | ((ratio < 1) & (a < 0))
        keep = ~((kl >= self.options.kl_threshold) & outward)
        w = behavior_weight(proximal, behavior, self.cfg.behavior_weight_cap)
        loss = (w * keep.to(new.dtype) * (-a * ratio)).mean()
        loss, kl_val = ref_kl(loss, new, ref, self.cfg.kl_coef)
        with_stats = LossStats(
            loss=float(loss.detach()), clip_frac=float((~keep).float().mean()), approx_kl=float(kl.mean()),
            ratio_mean=float(ratio.detach().mean()), ratio_max=float(ratio.detach().max()),
            ratio_min=float(ratio.detach().min()), kl_ref=kl_val)
        return loss, with_stats

    def step_kl(self, means: StepMeans) -> torch.Tensor:
        """KL [n, k] of each step's Gaussian to the proximal one (no gradient: it only masks)."""
        d = (means.new.detach().float() - means.old.float()) ** 2
        sq = d.mean(dim=tuple(range(2, d.ndim)))
        if self.options.kl_std == "none":
            return sq / 2.0
        s = trust_std(means.sigma.float(), means.sigma_next.float(), self.eta)
        return sq / (2.0 * s**2)

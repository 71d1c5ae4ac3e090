"""The recipe's rewards as one differentiable function, for reward-feedback learning.

ReFL / DRaFT-K run the last sampling steps with gradient, decode to float frames and ascend
the reward: ``build(recipe)`` gives ``DifferentiableReward``, whose ``__call__(frames,
prompts)`` is ``sum(weight * term)`` over the ``[[reward]]`` tables, the same total the
reward stage's ``RewardSet`` computes, as a [B] tensor with gradient. Each term is a
scorer's ``score_tensor`` (``api.DifferentiableScorer``); frames are float
[B, F, H, W, 3] on the uint8 scale [0, 255].

``check_differentiable(recipe)`` is the validator's cheap part (no weights load): for
``algorithm.name = "refl"`` every reward must be differentiable and fail on NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from unirl_stream import registry
from unirl_stream.api import DifferentiableScorer, Prompt, RewardError, UserInputError
from unirl_stream.rewards.combine import build_scorer, term_names
from unirl_stream.rewards.config import RewardSpec

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from unirl_stream.recipe import Recipe

REFL = "refl"  # the algorithm name whose recipes need differentiable rewards


def is_differentiable(plugin: object) -> bool:
    """Whether a reward plugin (its class) has ``score_tensor``; checked before loading."""
    return callable(getattr(plugin, "score_tensor", None))


def differentiable_names() -> list[str]:
    """The registered reward plugins that are differentiable (imports their modules: every
    reward module is light at import; a plugin that fails to import is left out)."""
    out = []
    for name in registry.names("rewards"):
        try:
            plugin = registry.load("rewards", name)
        except (RuntimeError, UserInputError):  # broken or ambiguous: not a choice anyway
            continue
        if is_differentiable(plugin):
            out.append(name)
    return out


def require_differentiable(specs: Sequence[RewardSpec], where: str = "reward") -> None:
    """UserInputError naming the first non-differentiable reward or ``drop`` table."""
    if not specs:
        raise UserInputError(f"{where}: at least one [[reward]] table is required")
    for i, spec in enumerate(specs):
        registry.entry("rewards", spec.name, where=f"{where}[{i}].name")  # unknown: named
        if not is_differentiable(registry.load("rewards", spec.name)):
            raise UserInputError(
                f"{where}[{i}].name: reward {spec.name!r} is not differentiable (reward-feedback "
                f"learning back-propagates the reward into the frames); differentiable rewards: "
                f"{', '.join(differentiable_names()) or 'none'}"
            )
        if spec.on_nan == "drop":
            # A NaN sample cannot be dropped after its forward: its NaN gradient would
            # reach the weights through every batched parameter gradient.
            raise UserInputError(
                f"{where}[{i}].on_nan: 'drop' is not supported for a differentiable reward "
                f"(a NaN score's gradient reaches the weights); use 'fail'"
            )


def check_differentiable(recipe: Recipe, where: str = "") -> None:
    """The validator's check: refl recipes need differentiable rewards (nothing loads)."""
    if recipe.algorithm.name != REFL:
        return
    try:
        require_differentiable(recipe.reward)
    except UserInputError as e:
        raise UserInputError(f"{where}: {e}" if where else str(e)) from None


class DifferentiableReward:
    """Weighted differentiable terms: ``__call__`` is the reward stage's total, with grad."""

    def __init__(self, specs: Sequence[RewardSpec], scorers: Sequence[DifferentiableScorer]) -> None:
        if len(specs) != len(scorers) or not specs:
            raise ValueError("DifferentiableReward needs one scorer per spec, at least one")
        self.specs, self.scorers = list(specs), list(scorers)
        self.names = term_names(specs)  # the reward stage's term names ("name#i" if repeated)

    @classmethod
    def from_specs(cls, specs: Sequence[RewardSpec], where: str = "reward") -> DifferentiableReward:
        require_differentiable(specs, where)
        scorers = [build_scorer(s, f"{where}[{i}]") for i, s in enumerate(specs)]
        return cls(specs, scorers)  # type: ignore[arg-type]  # checked by require_differentiable

    def terms(self, frames: torch.Tensor, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor]:
        """Each term's unweighted [B] scores, with gradient, on ``frames``' device.

        One call per scorer over the whole batch (no ``batch_size`` chunks: the graph keeps
        every chunk's activations until backward anyway; the trainer sizes the batch).
        A NaN/inf raises RewardError naming the term and the prompt.
        """
        import torch

        out: dict[str, torch.Tensor] = {}
        for name, scorer in zip(self.names, self.scorers, strict=True):
            values = scorer.score_tensor(frames, prompts).to(frames.device)
            bad = (~torch.isfinite(values.detach())).nonzero().flatten().tolist()
            if bad:
                i = bad[0]
                raise RewardError(
                    f"reward {name} returned {float(values[i])!r} for prompt {prompts[i].id} "
                    f"(row {i} of the differentiable reward's batch)"
                )
            out[name] = values
        return out

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """sum(weight * term): the reward stage's combination (``RewardSet._combine``)."""
        parts = [spec.weight * terms[name] for name, spec in zip(self.names, self.specs, strict=True)]
        return sum(parts[1:], parts[0])

    def __call__(self, frames: torch.Tensor, prompts: Sequence[Prompt]) -> torch.Tensor:
        return self.total(self.terms(frames, prompts))


def build(recipe: Recipe) -> DifferentiableReward:
    """The recipe's ``[[reward]]`` list as one differentiable reward (loads the weights)."""
    return DifferentiableReward.from_specs(recipe.reward)

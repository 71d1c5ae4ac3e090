"""What every algorithm plugin shares (``training.Algorithm``), and the GRPO family's base.

``AlgorithmBase``: built as ``cls(cfg, recipe)``; decodes ``[algorithm.options]`` with the
class's ``Config`` (if any) into ``self.options``; publishes the trained weights and keeps no
state of its own. ``ReplayObjective``: an objective on replayed SDE log-probs (``sde``
rollouts), trained by ``train.train_on_batch``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from unirl_stream.algorithms.config import AlgorithmConfig
from unirl_stream.training import LossStats, ObjectiveInput, RolloutSpec

if TYPE_CHECKING:  # pragma: no cover
    from tensordict import TensorDict

    from unirl_stream.api import Policy, Prompt
    from unirl_stream.recipe import Recipe


def build(recipe: Recipe) -> Any:
    """The recipe's algorithm plugin, built (cheap: heavy parts load on first use)."""
    from unirl_stream import registry

    return registry.load("algorithms", recipe.algorithm.name)(recipe.algorithm, recipe)


def rollout_spec(recipe: Recipe) -> RolloutSpec:
    """What the recipe's algorithm needs producers to sample."""
    return build(recipe).rollout(recipe.sampling)


class AlgorithmBase:
    Config: ClassVar[type | None] = None
    supports_fsdp: ClassVar[bool] = True  # False: needs whole (unsharded) adapter parameters

    def __init__(self, cfg: AlgorithmConfig, recipe: Recipe | None = None) -> None:
        from unirl_stream import registry

        self.cfg = cfg
        self.recipe = recipe
        self.options: Any = registry.decode_options(type(self), dict(cfg.options), "algorithm.options")

    def rollout(self, sampling: Any) -> RolloutSpec:
        return RolloutSpec(kind="sde")

    def publish(self, policy: Policy) -> bytes:
        return policy.export_weights()

    def state(self) -> bytes:
        return b""

    def load_state(self, blob: bytes) -> None:
        if blob:
            raise ValueError(f"{type(self).__name__} keeps no state, but the checkpoint holds {len(blob)} bytes")


class ReplayObjective(AlgorithmBase):
    """The GRPO family: subclasses are ``training.Objective`` callables (``needs`` + ``__call__``)."""

    needs: frozenset[ObjectiveInput] = frozenset()

    def train_batch(self, policy: Policy, optimizer: Any, prompts: Sequence[Prompt], batch: TensorDict,
                    dp: Any = None, per_step: bool = True) -> list[LossStats]:
        from unirl_stream.algorithms.train import train_on_batch

        return train_on_batch(policy, self, optimizer, prompts, batch, self.cfg, per_step=per_step, dp=dp)  # type: ignore[arg-type]

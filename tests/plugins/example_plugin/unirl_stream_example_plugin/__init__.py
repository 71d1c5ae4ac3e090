"""Example plugins for unirl-stream, registered by entry points in this distribution.

- reward ``constant``: every sample scores ``value`` (a baseline / smoke-test reward).
- stage ``keep_top_fraction``: a filter between the reward stage and the trainer. It
  claims scored groups, marks the best ``fraction`` of each group with ``keep = 1`` (the
  rest 0) and writes that as a new field. Recipes add ``"keep"`` to
  ``pipeline.train_filters`` so the trainer waits for it and trains only kept samples.

Only msgspec is imported at module level: recipe validation imports this module to decode
options, and must stay fast. torch is imported where tensors are made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

import msgspec
from msgspec import Meta

from unirl_stream.api import REWARD, FieldSpec, Prompt, ScoreBatch, StepResult, TaskSpec


class ConstantConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    value: float = 1.0
    """The score of every sample."""
    batch_size: Annotated[int, Meta(ge=1)] = 64


class Constant:
    name: ClassVar[str] = "constant"
    Config: ClassVar[type[ConstantConfig]] = ConstantConfig

    def __init__(self, config: ConstantConfig | None = None) -> None:
        self.config = config or ConstantConfig()
        self.batch_size = self.config.batch_size
        self.device = "cpu"

    def score(self, media: Any, prompts: Sequence[Prompt]) -> ScoreBatch:
        return ScoreBatch(scores=[self.config.value] * len(prompts))


class KeepConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    fraction: Annotated[float, Meta(gt=0, le=1)] = 0.5
    """Share of each group (by reward, best first) marked keep = 1."""


class KeepTopFraction:
    Config: ClassVar[type[KeepConfig]] = KeepConfig
    task: ClassVar[str] = "keep_top_fraction"

    @classmethod
    def tasks(cls, recipe: Any) -> list[TaskSpec]:
        """What this stage claims: whole scored groups (the driver registers it)."""
        return [TaskSpec(cls.task, (REWARD,), by_group=True)]

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.options = ctx.options or KeepConfig()
        self.store = ctx.store
        self.store.declare([FieldSpec("keep", "uint8")])  # what it produces

    def step(self) -> StepResult:
        import torch

        claim = self.store.claim(self.task, 1)
        if claim is None:
            return StepResult()
        rewards = self.store.get(list(claim.ids), [REWARD])[REWARD].reshape(-1)
        n_keep = max(1, math.ceil(self.options.fraction * len(claim.ids)))
        keep = torch.zeros(len(claim.ids), dtype=torch.uint8)
        keep[torch.argsort(rewards, descending=True, stable=True)[:n_keep]] = 1
        self.store.put(list(claim.ids), {"keep": keep})
        self.store.ack(claim)
        return StepResult(processed=len(claim.ids), metrics={"kept": float(n_keep)})

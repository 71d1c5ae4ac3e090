"""Rollout producer: ticket from the gate -> sample one prompt group -> one store write."""

from __future__ import annotations

import time
from typing import Any

from unirl_stream import registry
from unirl_stream.algorithms.noise import sample_seed
from unirl_stream.api import SampleMeta, StepResult, sample_id
from unirl_stream.stages.base import StageBase, StageContext


class RolloutStage(StageBase):
    """Samples whole prompt groups with the newest published weights.

    Weights are refreshed between groups, never inside one, so every sample of a group has
    the same ``behavior_version``: ``held``, the version of the weights loaded, a copy of the
    trainer's version as the weight channel delivered it. A group is written in one ``put``
    (all members at once): a producer that dies mid-group leaves no partial group behind,
    only a journaled group id that the coordinator closes out as dropped.
    """

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        policy_cls = registry.load("models", self.recipe.model.name)
        self.policy: Any = policy_cls.from_recipe(self.recipe, device=ctx.device, role="producer")
        self.store.declare(self.policy.field_specs())  # the trajectory and its media
        self.held = -1
        self.load_latency_s = 0.0

    def _refresh(self, wait_for: int = -1) -> None:
        """Load newer weights if any; with ``wait_for`` block until that version exists."""
        while True:
            got = self.ctx.weights.poll(self.held)
            if got is not None:
                self.policy.load_weights(got.blob)
                self.held = got.version
                self.load_latency_s = time.time() - got.published_at
            if self.held >= wait_for or self.ctx.control.stopping():
                return
            time.sleep(0.01)

    def step(self) -> StepResult:
        ticket = self.ctx.control.start_group(self.ctx.source)
        if ticket is None:
            return StepResult(done=self.ctx.control.stopping())
        self._refresh(wait_for=ticket.version)
        prompt = self.ctx.prompts[ticket.prompt_index]
        ids = [sample_id(ticket.group, k) for k in range(ticket.size)]
        seeds = [sample_seed(self.recipe.run.seed, sid) for sid in ids]  # a function of the id alone
        chunk = self.recipe.pipeline.rollout_batch
        parts = [
            self.policy.rollout([prompt] * len(seeds[i : i + chunk]), seeds[i : i + chunk], self.held)
            for i in range(0, len(seeds), chunk)
        ]
        import torch

        batch = parts[0] if len(parts) == 1 else torch.cat(parts)
        meta = [SampleMeta(ticket.group, ticket.size, self.held)] * ticket.size
        self.store.put(ids, batch, meta, timeout=self.recipe.store.put_timeout_s)
        self.ctx.control.group_written()
        return StepResult(processed=ticket.size, policy_version=self.held,
                          metrics={"weights_load_latency_s": self.load_latency_s})

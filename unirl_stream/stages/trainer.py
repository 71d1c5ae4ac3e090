"""Trainer: claim ready groups, apply the staleness rule, update, publish, record outcomes."""

from __future__ import annotations

import time
from typing import Any

from unirl_stream import registry
from unirl_stream.api import SampleMeta, SampleOutcome, StepResult, TrainStep, prompt_of_group
from unirl_stream.pipeline import checkpoint
from unirl_stream.pipeline.control import CoordinatorWeights
from unirl_stream.stages.base import StageBase, StageContext

TRAIN_TASK = "train"  # by group, requires: pipeline.train_requires


class TrainerStage(StageBase):
    """One optimizer step per ``groups_per_step`` accepted groups.

    Staleness rule: a group sampled by version u is trained at version v only if
    v - u <= max_staleness; otherwise it is dropped (ledger reason ``stale``) and its
    place in the gate is given back. Groups are acked as soon as they are claimed: the
    trainer owns them from then on (a trainer crash ends the run; ``--resume`` restarts
    from the last checkpoint and closes out what was in flight).
    """

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        from unirl_stream.algorithms.train import make_optimizer

        policy_cls = registry.load("models", self.recipe.model.name)
        self.policy: Any = policy_cls.from_recipe(self.recipe, device=ctx.device)
        self.store.declare(self.policy.field_specs())
        self.objective = registry.load("algorithms", self.recipe.algorithm.name)(self.recipe.algorithm)
        self.optimizer = make_optimizer(self.policy, self.recipe.algorithm)
        self.weights = CoordinatorWeights(ctx.control)
        self.steps = 0
        self.version = 0
        self.pending: list[tuple[str, list[str], SampleMeta]] = []
        if ctx.resume_from is not None:
            self.steps, self.version = checkpoint.restore(ctx.resume_from, self.policy, self.optimizer)
        self.fields = [f.name for f in self.policy.field_specs() if f.name != "media"]
        self.filters = list(self.recipe.pipeline.train_filters)
        self.fields += ["reward", "reward_ok", "advantage", *self.filters]
        self._publish()

    def _publish(self) -> float:
        """Publish the current weights as ``self.version``; returns the seconds it took."""
        t0 = time.time()
        self.policy.version = self.version
        self.weights.publish(self.version, self.policy.export_weights())
        return time.time() - t0

    def step(self) -> StepResult:
        p = self.recipe.pipeline
        if self.steps >= self.recipe.run.total_steps:
            return StepResult(done=True)
        dropped = self._collect(p.groups_per_step - len(self.pending))
        if len(self.pending) < p.groups_per_step:
            return StepResult(dropped=dropped)
        groups, self.pending = self.pending[: p.groups_per_step], self.pending[p.groups_per_step :]
        stats = self._train(groups)
        return StepResult(processed=sum(len(ids) for _, ids, _ in groups), dropped=dropped,
                          metrics=stats, done=self.steps >= self.recipe.run.total_steps)

    def _collect(self, want: int) -> int:
        """Claim up to ``want`` groups; drop the too-stale ones. Returns samples dropped."""
        if want <= 0:
            return 0
        claim = self.store.claim(TRAIN_TASK, want)
        if claim is None:
            return 0
        self.store.ack(claim)
        ids = list(claim.ids)
        metas = self.store.meta(ids)
        by_group: dict[str, tuple[list[str], SampleMeta]] = {}
        for sid, m in zip(ids, metas):
            by_group.setdefault(m.group, ([], m))[0].append(sid)
        dropped = 0
        for gid, (members, meta) in by_group.items():
            staleness = self.version - meta.behavior_version
            if staleness > self.recipe.pipeline.max_staleness:
                reason = f"stale: sampled by v{meta.behavior_version}, trainer at v{self.version}, max_staleness={self.recipe.pipeline.max_staleness}"
                self.finalize([self._outcome(sid, meta, "dropped", reason, None) for sid in members])
                self.store.delete(members)
                self.ctx.control.drop_group(1)
                dropped += len(members)
            else:
                self.pending.append((gid, members, meta))
        return dropped

    def _train(self, groups: list[tuple[str, list[str], SampleMeta]]) -> dict[str, float]:
        from unirl_stream.algorithms.train import train_on_batch

        members = [(sid, m) for _, ids, m in groups for sid in ids]
        ids = [sid for sid, _ in members]
        batch = self.store.get(ids, self.fields)
        keep = batch["reward_ok"].bool()  # reward dropped (NaN, on_nan = "drop"): already final
        rewards, advs = batch["reward"].tolist(), batch["advantage"].tolist()
        for f, mask in self._filtered(batch, keep).items():
            self.finalize([
                self._outcome(members[j][0], members[j][1], "dropped", f"filtered: {f}=0", None, rewards[j], advs[j])
                for j in mask.nonzero().flatten().tolist()])
            keep &= ~mask
        kept = [j for j, k in enumerate(keep.tolist()) if k]
        if not kept:  # everything was dropped or filtered: nothing to learn from, no step
            self.store.delete(ids)
            self.ctx.control.drop_group(len(groups))  # no step took them: their places go back
            return {}
        prompts = [self.ctx.prompts_by_id[prompt_of_group(members[j][1].group)] for j in kept]
        trained_at = self.version
        losses = train_on_batch(self.policy, self.objective, self.optimizer, prompts, batch[keep],
                                self.recipe.algorithm, bump_version=False)
        self.steps += 1
        latency = 0.0
        if self.steps % self.recipe.pipeline.publish_every == 0:
            self.version += 1
            latency = self._publish()
        self.finalize([
            self._outcome(members[j][0], members[j][1], "trained", "", trained_at, rewards[j], advs[j])
            for j in kept
        ])
        self.store.delete(ids)
        last = losses[-1]
        kept_rewards = [rewards[j] for j in kept]
        mean = sum(kept_rewards) / max(len(kept_rewards), 1)
        std = (sum((r - mean) ** 2 for r in kept_rewards) / max(len(kept_rewards), 1)) ** 0.5
        self.ctx.sink.emit(TrainStep(
            run_id=self.ctx.run_id, source=self.ctx.source, t=time.time(), step=self.steps,
            policy_version=self.version, samples=len(kept), loss=last.loss, clip_frac=last.clip_frac,
            approx_kl=last.approx_kl, grad_norm=last.grad_norm, reward_mean=mean, reward_std=std,
            staleness=[trained_at - members[j][1].behavior_version for j in kept],
            publish_latency_s=latency))
        self._maybe_checkpoint()
        return {"loss": last.loss, "reward_mean": mean, "step": float(self.steps)}

    def _filtered(self, batch: Any, keep: Any) -> dict[str, Any]:
        """Per filter field, the samples (still kept so far) that it removes."""
        out = {}
        for f in self.filters:
            mask = keep & (batch[f].reshape(-1) == 0)
            keep = keep & ~mask
            out[f] = mask
        return out

    def _outcome(self, sid: str, meta: SampleMeta, status: str, reason: str, trained_at: int | None,
                 reward: float | None = None, advantage: float | None = None) -> SampleOutcome:
        return SampleOutcome(
            run_id=self.ctx.run_id, source=self.ctx.source, t=time.time(), sample_id=sid,
            prompt_id=prompt_of_group(meta.group), status=status, reason=reason,  # type: ignore[arg-type]
            behavior_version=meta.behavior_version,
            trained_at_version=-1 if trained_at is None else trained_at,
            staleness=-1 if trained_at is None else trained_at - meta.behavior_version,
            reward=reward, advantage=advantage)

    def _maybe_checkpoint(self) -> None:
        every = self.recipe.run.checkpoint_every
        last = self.steps >= self.recipe.run.total_steps
        if (every and self.steps % every == 0) or last:
            checkpoint.save(self.ctx.run_dir, self.steps, self.version, self.policy, self.optimizer)

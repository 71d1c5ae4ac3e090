"""Trainer: a group of N ranks. Rank 0 batches; every rank learns on its shard.

- **Batcher** (rank 0 alone): claims whole groups, applies the staleness rule, decides which
  samples of a batch are trained (reward NaN drops, filter fields), writes the ledger,
  publishes weights, checkpoints and emits metrics.
- **Learner** (every rank): reads its contiguous shard of the chosen sample ids from the
  store itself (no tensor passes through rank 0) and takes the data-parallel optimizer step
  (``train_on_batch`` with ``dp``), so N ranks make the update one rank would make.

Rank 0 tells the others what to do with small messages over the process group: ``train``
(the sample ids), ``idle`` (about once a second, so a follower's wait never hits the
collective timeout) and ``stop``. The group leaves together: a rank that leaves its loop
(the run is stopping) follows rank 0 until rank 0's ``stop``.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from unirl_stream import registry
from unirl_stream.algorithms import parallel
from unirl_stream.algorithms.parallel import DataParallel
from unirl_stream.api import (
    ADVANTAGE,
    REWARD,
    TRAINABLE,
    SampleMeta,
    StepResult,
    TaskSpec,
    prompt_of_group,
)
from unirl_stream.events import SampleOutcome, TrainStep
from unirl_stream.stages import checkpoint
from unirl_stream.stages.base import StageBase, StageContext

if TYPE_CHECKING:  # pragma: no cover
    from unirl_stream.recipe import Recipe

TRAIN = "train"
IDLE_MESSAGE_S = 1.0
Members = list[tuple[str, SampleMeta]]  # (sample id, its meta) of a batch, in order


class TrainerStage(StageBase):
    """One optimizer step per ``groups_per_step`` accepted groups.

    Staleness rule: a group sampled by version u is trained at version v only if
    v - u <= max_staleness; otherwise it is dropped (ledger reason ``stale``) and its
    place in the gate is given back. Groups are acked as soon as they are claimed: the
    trainer owns them from then on (a trainer crash ends the run; ``--resume`` restarts
    from the last checkpoint and closes out what was in flight).

    The trainer (rank 0, the batcher) owns the policy version: ``version`` counts published
    weights; producers, the coordinator and every sample's ``behavior_version`` copy it.
    """

    @classmethod
    def tasks(cls, recipe: Recipe) -> list[TaskSpec]:
        p = recipe.pipeline
        return [TaskSpec(TRAIN, tuple(dict.fromkeys(p.train_requires + p.train_filters)), by_group=True)]

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        from unirl_stream.algorithms.train import make_optimizer

        policy_cls = registry.load("models", self.recipe.model.name)
        self.policy: Any = policy_cls.from_recipe(self.recipe, device=ctx.device)
        self.store.declare(self.policy.field_specs())
        from unirl_stream.algorithms.base import build

        self.algorithm = build(self.recipe)
        self.dp = self._join()
        self.steps = 0
        self.version = 0
        self.pending: list[tuple[str, list[str], SampleMeta]] = []
        self._stopped = self.dp.world == 1  # the group has exchanged its stop message
        self._last_message = time.time()
        # Checkpoints hold full, unsharded state: weights load before sharding, the optimizer's
        # state after it (cut like its parameters), on every rank.
        if ctx.resume_from is not None:
            self.steps, self.version = checkpoint.restore(ctx.resume_from, self.policy)
            self.algorithm.load_state(checkpoint.algorithm_state(ctx.resume_from))
        if self.recipe.pipeline.trainer.sharding == "fsdp":
            parallel.shard(self.policy, self.dp)
        self.optimizer = make_optimizer(self.policy, self.recipe.algorithm)
        if ctx.resume_from is not None:
            parallel.load_optimizer_state(self.optimizer, checkpoint.optimizer_state(ctx.resume_from))
        self.specs = [f for f in self.policy.field_specs() if f.name != "media"]
        self.filters = list(self.recipe.pipeline.train_filters)
        self._publish()  # version 0 (or the checkpoint's): producers start from it

    def _join(self) -> DataParallel:
        from unirl_stream.algorithms.parallel import join

        world, ctl = self.recipe.pipeline.trainer_workers, self.ctx.control
        if world == 1 and self.recipe.pipeline.trainer.sharding != "fsdp":
            return DataParallel.single()  # FSDP2 needs a process group, even of one rank
        key = f"{self.ctx.run_id}/trainer-rendezvous"
        backend = "nccl" if str(self.policy_device()).startswith("cuda") else "gloo"
        # One node: the group's sockets stay on loopback; across nodes they need the node's address.
        host = "127.0.0.1"
        if world > 1:
            import ray

            host = host if len(ray.nodes()) == 1 else ray.util.get_node_ip_address()
        if host == "127.0.0.1":
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        return join(self.ctx.worker, world, post=lambda a: ctl.post(key, a), read=lambda: ctl.read(key),
                    backend=backend, timeout_s=self.recipe.pipeline.trainer.collective_timeout_s, host=host)

    def policy_device(self) -> str:
        params = list(self.policy.trainable_parameters())
        return str(params[0].device) if params else "cpu"

    def _publish(self) -> float:
        """Publish the current weights as ``self.version`` (rank 0); returns the seconds it
        took. Under fsdp every rank takes part: the export gathers the sharded adapters."""
        t0 = time.time()
        if self.dp.leader or self.dp.sharded:
            blob = self.algorithm.publish(self.policy)
            if self.dp.leader:
                self.ctx.weights.publish(self.version, blob)
        return time.time() - t0

    def _publish_if_due(self) -> float:
        if self.steps % self.recipe.pipeline.publish_every:
            return 0.0
        self.version += 1
        return self._publish()

    # ------------------------------------------------------------------ the loop
    def step(self) -> StepResult:
        return self._lead() if self.dp.leader else self._follow()

    def _lead(self) -> StepResult:
        p = self.recipe.pipeline
        if self.steps >= self.recipe.run.total_steps:
            self._stop()
            return StepResult(done=True)
        dropped = self._collect(p.groups_per_step - len(self.pending))
        if len(self.pending) < p.groups_per_step:
            if not self._stopped and time.time() - self._last_message >= IDLE_MESSAGE_S:
                self._tell({"op": "idle"})
            return StepResult(dropped=dropped)
        groups, self.pending = self.pending[: p.groups_per_step], self.pending[p.groups_per_step :]
        stats = self._train(groups)
        done = self.steps >= self.recipe.run.total_steps
        if done:
            self._stop()
        return StepResult(processed=sum(len(ids) for _, ids, _ in groups), dropped=dropped,
                          metrics=stats, done=done)

    def _follow(self) -> StepResult:
        message = self.dp.broadcast()
        if message["op"] == "stop":
            self._stopped = True
            return StepResult(done=True)
        if message["op"] == "train":  # the same steps as rank 0, collectives in the same order
            self._learn(message["ids"])
            self.steps += 1
            self._publish_if_due()
            self._maybe_checkpoint()
            return StepResult(processed=len(self.dp.shard(len(message["ids"]))))
        return StepResult()

    def _tell(self, message: dict[str, Any]) -> None:
        self.dp.broadcast(message)
        self._last_message = time.time()

    def _stop(self) -> None:
        if not self._stopped:
            self._tell({"op": "stop"})
            self._stopped = True

    def close(self) -> None:
        """The group leaves together: rank 0 sends ``stop``; the others follow until it."""
        if self.dp.leader:
            self._stop()
        while not self._stopped:
            self._follow()
        self.dp.close()

    # ------------------------------------------------------------------ batcher (rank 0)
    def _collect(self, want: int) -> int:
        """Claim up to ``want`` groups; drop the too-stale ones. Returns samples dropped."""
        if want <= 0:
            return 0
        claim = self.store.claim(TRAIN, want)
        if claim is None:
            return 0
        self.store.ack(claim)
        ids = list(claim.ids)
        metas = self.store.meta(ids)
        by_group: dict[str, tuple[list[str], SampleMeta]] = {}
        for sid, m in zip(ids, metas, strict=True):
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
        """One optimizer step on the groups' samples that are still trainable."""
        members = [(sid, m) for _, ids, m in groups for sid in ids]
        ids = [sid for sid, _ in members]
        small = self.store.get(ids, [REWARD, TRAINABLE, ADVANTAGE, *self.filters])
        rewards, advs = small[REWARD].tolist(), small[ADVANTAGE].tolist()
        kept = self._select(small, members, rewards, advs)
        if not kept:  # everything was dropped or filtered: nothing to learn from, no step
            self.store.delete(ids)
            self.ctx.control.drop_group(len(groups))  # no step took them: their places go back
            return {}
        trained_at = self.version
        kept_ids = [ids[j] for j in kept]
        self._tell({"op": "train", "ids": kept_ids})
        losses = self._learn(kept_ids)
        self.steps += 1
        latency = self._publish_if_due()
        self.finalize([self._outcome(*members[j], "trained", "", trained_at, rewards[j], advs[j]) for j in kept])
        self.store.delete(ids)
        mean = self._emit(losses[-1], [rewards[j] for j in kept],
                          [trained_at - members[j][1].behavior_version for j in kept], latency)
        self._maybe_checkpoint()
        return {"loss": losses[-1].loss, "reward_mean": mean, "step": float(self.steps)}

    def _select(self, small: Any, members: Members, rewards: list[float], advs: list[float]) -> list[int]:
        """Positions of the samples to train on. Not ``trainable`` ones already have their
        ledger row (the reward stage dropped them); the filter fields' zeros get one here."""
        keep = small[TRAINABLE].bool()
        for f in self.filters:
            mask = keep & (small[f].reshape(-1) == 0)
            self.finalize([self._outcome(*members[j], "dropped", f"filtered: {f}=0", None, rewards[j], advs[j])
                           for j in mask.nonzero().flatten().tolist()])
            keep &= ~mask
        return [j for j, k in enumerate(keep.tolist()) if k]

    def _emit(self, last: Any, rewards: list[float], staleness: list[int], latency: float) -> float:
        """The step's metrics event; returns the kept samples' mean reward."""
        mean = sum(rewards) / max(len(rewards), 1)
        std = (sum((r - mean) ** 2 for r in rewards) / max(len(rewards), 1)) ** 0.5
        self.ctx.sink.emit(TrainStep(
            run_id=self.ctx.run_id, source=self.ctx.source, t=time.time(), step=self.steps,
            policy_version=self.version, samples=len(rewards), loss=last.loss, clip_frac=last.clip_frac,
            approx_kl=last.approx_kl, grad_norm=last.grad_norm, reward_mean=mean, reward_std=std,
            staleness=staleness, rewards=rewards, publish_latency_s=latency))
        return mean

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
        if not ((every and self.steps % every == 0) or last) or not (self.dp.leader or self.dp.sharded):
            return
        weights = self.policy.export_weights()  # both gather under fsdp: every rank calls them
        state = parallel.full_optimizer_state(self.optimizer)
        if self.dp.leader:
            checkpoint.save(self.ctx.run_dir, self.steps, self.version, weights, state, self.algorithm.state())

    # ------------------------------------------------------------------ learner (every rank)
    def _learn(self, ids: list[str]) -> list[Any]:
        """This rank's shard of ``ids``: read it from the store, take the data-parallel step."""
        mine = self.dp.shard(len(ids))
        shard = ids[mine.start:mine.stop]
        batch = self.store.get(shard, [f.name for f in self.specs] + [ADVANTAGE]) if shard else self._empty()
        prompts = [self.ctx.prompts_by_id[prompt_of_group(self._group(sid))] for sid in shard]
        return self.algorithm.train_batch(self.policy, self.optimizer, prompts, batch, dp=self.dp)

    def _empty(self) -> Any:
        """A zero-row batch with the replay fields' shapes (a rank with nothing to replay
        still takes part in every collective)."""
        import torch
        from tensordict import TensorDict

        cols = {f.name: torch.zeros((0, *[max(d, 0) for d in f.shape]), dtype=getattr(torch, f.dtype))
                for f in self.specs}
        cols[ADVANTAGE] = torch.zeros(0, dtype=torch.float32)
        return TensorDict(cols, batch_size=[0])

    @staticmethod
    def _group(sid: str) -> str:
        from unirl_stream.api import split_sample_id

        return split_sample_id(sid)[0]

"""Reward worker: score media in batches across groups, then write group advantages."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from unirl_stream.api import (
    ADVANTAGE,
    MEDIA,
    REWARD,
    TRAINABLE,
    FieldSpec,
    RewardError,
    StepResult,
    TaskSpec,
    prompt_of_group,
    split_sample_id,
)
from unirl_stream.events import SampleOutcome
from unirl_stream.stages.base import StageBase, StageContext

if TYPE_CHECKING:  # pragma: no cover
    from unirl_stream.recipe import Recipe

SCORE = TaskSpec("reward", (MEDIA,))
NORMALISE = TaskSpec("advantage", (REWARD,), by_group=True)


class RewardStage(StageBase):
    """Two small jobs in one worker, each a claim on the store:

    1. ``reward``: claim up to ``reward_batch`` samples that have ``media`` (from any
       groups), score them with the recipe's weighted rewards, write ``reward`` and
       ``trainable``. A NaN/inf score either fails the run naming the sample
       (``on_nan = "fail"``) or drops the sample (``"drop"``: ledger row now, ``trainable=0``
       so its group still completes and the trainer skips it).
    2. ``advantage``: claim whole groups whose members all have ``reward`` and write
       ``advantage`` (z-scored within the group over valid members). Every
       ``logging.media_every`` policy versions, the group's best, median and worst
       samples go to the media writer (``stages.media``), which never blocks this loop.
    """

    @classmethod
    def tasks(cls, recipe: Recipe) -> list[TaskSpec]:
        return [SCORE, NORMALISE]

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        from unirl_stream.rewards.combine import RewardSet
        from unirl_stream.stages.media import MediaWriter

        self.rewards = RewardSet.from_specs(self.recipe.reward)
        self.running = _RunningStd()  # for adv_std = "global"
        lg = self.recipe.logging
        self.media = MediaWriter(ctx.run_dir, lg.media_every, lg.media_max_mb, ctx.sink,
                                 ctx.run_id, ctx.source)
        # Overwritable: a worker that dies between its write and its ack is replaced by one
        # that scores the same samples again (same media, same score).
        self.store.declare([FieldSpec(REWARD, "float32", (), True),
                            FieldSpec(TRAINABLE, "uint8", (), True),
                            FieldSpec("reward_terms", "float32", (len(self.rewards.names),), True),
                            FieldSpec(ADVANTAGE, "float32", (), True)])
        self.last_terms: dict[str, float] = {}

    def step(self) -> StepResult:
        scored, dropped = self._score()
        groups = self._advantage()
        metrics = {**self.last_terms, **self.media.counters()}
        return StepResult(processed=scored + groups, dropped=dropped, metrics=metrics)

    def _score(self) -> tuple[int, int]:
        import torch

        from unirl_stream.rewards.combine import raise_on_fail

        claim = self.store.claim(SCORE.name, self.recipe.pipeline.reward_batch)
        if claim is None:
            return 0, 0
        ids = list(claim.ids)
        media = self.store.get(ids, [MEDIA])[MEDIA]
        prompts = [self.ctx.prompts_by_id[prompt_of_group(split_sample_id(i)[0])] for i in ids]
        result = self.rewards.score(ids, media, prompts)
        try:
            bad = raise_on_fail(result)  # on_nan = "fail": the run stops, naming the sample
        except RewardError as e:
            self.ctx.control.fail(str(e))
            raise
        ok = torch.tensor([0 if i in bad else 1 for i in ids], dtype=torch.uint8)
        totals = torch.tensor([0.0 if i in bad else v for i, v in zip(ids, result.totals, strict=True)],
                              dtype=torch.float32)
        terms = torch.tensor([[float("nan") if (v := result.terms[n][k]) is None else v
                               for n in self.rewards.names] for k in range(len(ids))],
                             dtype=torch.float32).reshape(len(ids), len(self.rewards.names))
        self.store.put(ids, {REWARD: totals, TRAINABLE: ok, "reward_terms": terms})
        self.store.ack(claim)
        self.last_terms = result.metrics()
        if bad:
            self._drop(ids, bad)
        return len(ids), len(bad)

    def _drop(self, ids: list[str], bad: dict[str, str]) -> None:
        metas = dict(zip(ids, self.store.meta(ids), strict=True))
        self.finalize([
            SampleOutcome(run_id=self.ctx.run_id, source=self.ctx.source, t=time.time(),
                          sample_id=sid, prompt_id=prompt_of_group(metas[sid].group),
                          status="dropped", reason=reason,
                          behavior_version=metas[sid].behavior_version)
            for sid, reason in bad.items()
        ])

    def _advantage(self) -> int:
        import torch

        from unirl_stream.algorithms.advantages import group_advantages

        claim = self.store.claim(NORMALISE.name, max(1, self.recipe.pipeline.reward_batch // 4))
        if claim is None:
            return 0
        ids = list(claim.ids)
        td = self.store.get(ids, [REWARD, TRAINABLE])
        ok = td[TRAINABLE].bool()
        groups = [split_sample_id(i)[0] for i, k in zip(ids, ok.tolist(), strict=True) if k]
        a = self.recipe.algorithm
        adv = torch.zeros(len(ids), dtype=torch.float32)  # dropped samples: 0, never trained
        if groups:
            self.running.update(td[REWARD][ok].tolist())
            adv[ok] = group_advantages(td[REWARD][ok], groups, a.adv_std, a.adv_clip,
                                       global_std=self.running.std if a.adv_std == "global" else None)
        # before ``advantage`` is written: from then on the trainer may train and delete them
        self._offer_media(ids, td[REWARD], ok, adv)
        self.store.put(ids, {ADVANTAGE: adv})
        self.store.ack(claim)
        return len(set(groups))

    def _offer_media(self, ids: list[str], reward: Any, ok: Any, adv: Any) -> None:
        """Best/median/worst of each claimed group sampled at a ``media_every`` version."""
        from unirl_stream.stages.media import MediaItem, pick

        metas = self.store.meta(ids)
        due = [j for j, m in enumerate(metas) if ok[j] and self.media.due(m.behavior_version)]
        if not due:
            return
        now = self.ctx.control.gate().version
        by_group: dict[str, list[int]] = {}
        for j in due:
            by_group.setdefault(metas[j].group, []).append(j)
        for group, members in by_group.items():
            chosen = [(members[i], rank) for i, rank in pick([float(reward[j]) for j in members])]
            picked = [ids[j] for j, _ in chosen]
            td = self.store.get(picked, [MEDIA, "reward_terms"])
            items = [MediaItem(
                sample_id=ids[j], group=group, prompt=self.ctx.prompts_by_id[prompt_of_group(group)].text,
                version=metas[j].behavior_version, rank=rank, reward=float(reward[j]),
                terms=dict(zip(self.rewards.names, td["reward_terms"][k].tolist(), strict=True)),
                advantage=float(adv[j]), staleness=now - metas[j].behavior_version,
                frames=td[MEDIA][k].numpy().copy()) for k, (j, rank) in enumerate(chosen)]
            self.media.offer(items)

    def close(self) -> None:
        self.media.close()


class _RunningStd:
    """Std of every valid reward this worker has seen (Welford); ``adv_std = "global"``
    uses it instead of a batch std, since a streaming worker never holds the batch."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: list[float]) -> None:
        for v in values:
            self.n += 1
            d = v - self.mean
            self.mean += d / self.n
            self.m2 += d * (v - self.mean)

    @property
    def std(self) -> float:
        return (self.m2 / self.n) ** 0.5 if self.n > 1 else 0.0

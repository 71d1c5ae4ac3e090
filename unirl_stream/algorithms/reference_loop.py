"""The synchronous reference loop: sample groups -> reward -> advantages -> N updates.

Not a product entry point: tests use it to show that learning works end to end, and it is
the baseline the asynchronous pipeline is compared against. Everything is a function of the
seeds (sample seeds come from the run seed and the sample ids; prompts are visited in order),
so two runs with the same arguments produce the same rewards and weights — the pipeline run
with zero staleness on one producer should reproduce it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from unirl_stream.algorithms.advantages import group_advantages
from unirl_stream.algorithms.config import AlgorithmConfig
from unirl_stream.algorithms.noise import sample_seed
from unirl_stream.api import Policy, Prompt, group_id, sample_id
from unirl_stream.training import Algorithm, LossStats

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from tensordict import TensorDict

RewardFn = Callable[["torch.Tensor", Sequence[Prompt]], Any]
"""(media uint8 [B, F, H, W, 3], prompts) -> B rewards (list or tensor)."""


@dataclass
class RoundLog:
    round: int
    version: int  # policy version that sampled this round
    reward_mean: float
    reward_std: float
    stats: list[LossStats] = field(default_factory=list)


def sample_round(
    policy: Policy, prompts: Sequence[Prompt], round_: int, samples_per_prompt: int,
    run_seed: int, rollout_batch: int, version: int = 0,
) -> tuple[list[Prompt], list[str], list[str], TensorDict]:
    """Roll out one group per prompt for ``round_`` with the weights of policy ``version``:
    (prompt per sample, group ids, sample ids, trajectories)."""
    import torch

    rows = [(p, group_id(p.id, round_), k) for p in prompts for k in range(samples_per_prompt)]
    per_sample = [p for p, _, _ in rows]
    groups = [g for _, g, _ in rows]
    sids = [sample_id(g, k) for _, g, k in rows]
    seeds = [sample_seed(run_seed, s) for s in sids]
    parts = [
        policy.rollout(per_sample[i : i + rollout_batch], seeds[i : i + rollout_batch], version)
        for i in range(0, len(rows), rollout_batch)
    ]
    return per_sample, groups, sids, torch.cat(parts)


def run_reference_loop(
    policy: Policy,
    objective: Algorithm,
    optimizer: Any,
    prompts: Sequence[Prompt],
    reward_fn: RewardFn,
    algorithm: AlgorithmConfig,
    *,
    rounds: int,
    samples_per_prompt: int,
    prompts_per_round: int = 1,
    run_seed: int = 0,
    rollout_batch: int = 8,
    per_step: bool = True,
) -> list[RoundLog]:
    """``rounds`` rounds; round r samples prompts r*P .. r*P+P-1 (cyclic) and trains on them
    with ``algorithm.updates_per_batch`` updates (``per_step``: see ``train_on_batch``).
    Returns one RoundLog per round."""
    import torch

    logs = []
    for r in range(rounds):
        chosen = [prompts[(r * prompts_per_round + j) % len(prompts)] for j in range(prompts_per_round)]
        version = r  # this loop is the trainer: one batch, one update, one policy version
        per_sample, groups, _, batch = sample_round(
            policy, chosen, r, samples_per_prompt, run_seed, rollout_batch, version
        )
        rewards = torch.as_tensor(reward_fn(batch["media"], per_sample), dtype=torch.float32).flatten()
        batch["reward"] = rewards
        batch["advantage"] = group_advantages(rewards, groups, algorithm.adv_std, algorithm.adv_clip)
        stats = objective.train_batch(policy, optimizer, per_sample, batch, per_step=per_step)
        logs.append(RoundLog(r, version, float(rewards.mean()), float(rewards.std(unbiased=False)), stats))
    return logs

"""The cost model behind ``unirl-stream plan``.

Per-sample costs c_s (GPU-seconds) at the recipe's geometry give each stage a capacity in
samples/s: producers r / (c_rollout + c_decode) (plus c_reward where the reward worker
shares their GPUs), reward workers w / c_reward, trainer ranks t * e(t) / c_replay with e a
data-parallel efficiency (1 for one rank). Pipelined, the steady state is the slowest
capacity X (a trainer step waits for its busiest rank: ceil(B / t) samples), but only if the staleness gate lets enough batches be in flight: a batch passes
every stage (latency sum_s B / cap_s) while the trainer trains others, so with eta the
period is at least that latency / (eta + 1) (docs/scaling.md, "Cost model").
The synchronous loop shards every phase over all N GPUs, one after another:
B / (ceil(B / N) * (c_sync_rollout / e + c_decode + c_reward + c_replay / e)).
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from unirl_stream.planning.costs import CostRow

End = Literal["value", "low", "high"]


class Shape(msgspec.Struct, frozen=True, kw_only=True):
    """What of the recipe the costs depend on."""

    height: int
    width: int
    frames: int
    steps: int
    sde_steps: int
    guidance: float
    updates: int
    batch: int
    """Samples per optimizer step (groups_per_step x samples_per_prompt)."""
    eta: int


class Costs(msgspec.Struct, frozen=True, kw_only=True):
    """Seconds of one GPU per sample at the recipe's shape."""

    rollout: float
    decode: float
    reward: float
    replay: float
    sync_rollout: float
    """The synchronous loop's rollout, through the trainer's model and adapters."""


class Memory(msgspec.Struct, frozen=True, kw_only=True):
    rollout: float
    reward: float
    trainer: float
    trainer_sharded: float


class Split(msgspec.Struct, frozen=True, kw_only=True):
    rollout: int
    reward: int
    trainer: int
    reward_shared: bool
    """Reward workers run on producer GPUs (fractional placement) instead of their own."""

    def gpus(self) -> int:
        return self.rollout + self.trainer + (0 if self.reward_shared else self.reward)


class Prediction(msgspec.Struct, frozen=True, kw_only=True):
    samples_per_s: float
    bound: float
    """min over stages of capacity: what the pipeline reaches with eta large enough."""
    bottleneck: str
    capacity: dict[str, float]
    eta_needed: int
    """Smallest max_staleness at which the gate does not lower the steady state."""


def passes(guidance: float) -> int:
    return 2 if guidance > 1.0 else 1  # CFG: a conditional and an unconditional forward


def tokens(height: int, width: int, frames: int) -> int:
    """Latent positions up to the model's fixed spatial stride (it cancels in ratios)."""
    return ((frames - 1) // 4 + 1) * height * width


def scale(row: CostRow, shape: Shape) -> float:
    """Factor from the row's measurement to the recipe: tokens x steps x CFG passes for the
    transformer stages, pixels x frames for decode, 1 for reward (it scores a fixed number
    of frames). Linear in tokens although attention is quadratic: an extrapolation."""
    if row.stage == "reward":
        return 1.0
    if row.stage == "decode":
        return shape.height * shape.width * shape.frames / (row.height * row.width * row.frames)
    steps = shape.sde_steps if row.stage == "replay" else shape.steps
    return (tokens(shape.height, shape.width, shape.frames) * steps * passes(shape.guidance)
            / (tokens(row.height, row.width, row.frames) * row.steps * passes(row.guidance)))


def at(row: CostRow, end: End) -> float:
    picked = {"value": row.seconds, "low": row.low, "high": row.high}[end]
    return row.seconds if picked is None else picked


def costs(rows: dict[str, CostRow], shape: Shape, end: End = "value") -> Costs:
    """Per-sample costs at the recipe's shape; replay pays its proximal pass once and its
    update ``updates_per_batch`` times (the proximal share is kept at a range's ends)."""
    rep = rows["replay"]
    rep_s = at(rep, end)
    update_s = rep_s * (1.0 - rep.proximal_s / rep.seconds)
    sync = rows.get("sync_rollout", rows["rollout"])
    return Costs(rollout=at(rows["rollout"], end) * scale(rows["rollout"], shape),
                 sync_rollout=at(sync, end) * scale(sync, shape),
                 decode=at(rows["decode"], end) * scale(rows["decode"], shape),
                 reward=at(rows["reward"], end),
                 replay=(rep_s + (shape.updates - 1) * update_s) * scale(rep, shape))


def efficiency(ranks: int, dp: float) -> float:
    return 1.0 if ranks == 1 else dp


def shard(batch: int, ranks: int) -> int:
    """Samples on the busiest rank: a step waits for it (32 over 6 ranks: 6, not 5.33)."""
    return math.ceil(batch / ranks)


def capacities(split: Split, c: Costs, dp: float, batch: int) -> dict[str, float]:
    """Producers and reward workers stream (no batch barrier); trainer ranks step together."""
    producer_s = c.rollout + c.decode + (c.reward if split.reward_shared else 0.0)
    trainer_step_s = shard(batch, split.trainer) * c.replay / efficiency(split.trainer, dp)
    return {"rollout": split.rollout / producer_s, "reward": split.reward / c.reward,
            "trainer": batch / trainer_step_s}


def predict(split: Split, c: Costs, dp: float, eta: int, batch: int) -> Prediction:
    cap = capacities(split, c, dp, batch)
    bottleneck = min(cap, key=lambda s: cap[s])
    bound = cap[bottleneck]
    latency = sum(1.0 / v for v in cap.values())  # seconds per sample through every stage
    needed = max(0, math.ceil(bound * latency - 1e-9) - 1)
    return Prediction(samples_per_s=min(bound, (eta + 1) / latency), bound=bound, bottleneck=bottleneck,
                      capacity=cap, eta_needed=needed)


def sync_rate(c: Costs, gpus: int, dp: float, batch: int) -> float:
    """Samples/s of the synchronous loop on ``gpus``: each phase runs the batch sharded over
    every GPU; rollout through the trainer's FSDP2 model and replay pay the sharding
    efficiency, decode and reward are plain data parallel."""
    e = efficiency(gpus, dp)
    return batch / (shard(batch, gpus) * (c.sync_rollout / e + c.decode + c.reward + c.replay / e))


def trainer_rank_gib(mem: Memory, ranks: int, mode: str) -> float:
    if mode == "replicate":
        return mem.trainer
    return mem.trainer - mem.trainer_sharded + mem.trainer_sharded / ranks


def trainer_mode(mem: Memory, ranks: int, gpu_gib: float) -> str | None:
    """``replicate`` where a whole rank fits, else ``fsdp`` where a shard fits, else None."""
    for mode in ("replicate", "fsdp"):
        if trainer_rank_gib(mem, ranks, mode) <= gpu_gib:
            return mode
    return None


def fits(split: Split, mem: Memory, gpu_gib: float) -> bool:
    producer = mem.rollout + (mem.reward if split.reward_shared else 0.0)
    return (producer <= gpu_gib and mem.reward <= gpu_gib
            and trainer_mode(mem, split.trainer, gpu_gib) is not None)


def candidates(gpus: int, mem: Memory, gpu_gib: float) -> list[Split]:
    """Every split that uses all ``gpus`` and fits in memory; reward workers either get
    their own GPUs or share producer GPUs (at most one reward worker per producer)."""
    out = []
    for t in range(1, gpus):
        for r in range(1, gpus - t + 1):
            rest = gpus - t - r
            options = [Split(rollout=r, reward=rest, trainer=t, reward_shared=False)] if rest else \
                [Split(rollout=r, reward=w, trainer=t, reward_shared=True) for w in range(1, r + 1)]
            out += [s for s in options if fits(s, mem, gpu_gib)]
    return out


def ranked(gpus: int, c: Costs, mem: Memory, gpu_gib: float, dp: float, eta: int, batch: int) -> list[Split]:
    """Fitting splits, fastest first at the recipe's eta; ties go to fewer reward workers,
    then more trainer ranks (headroom where the trainer's cost is the least certain)."""
    def key(s: Split) -> tuple[float, int, int]:
        return round(predict(s, c, dp, eta, batch).samples_per_s, 12), -s.reward, s.trainer

    return sorted(candidates(gpus, mem, gpu_gib), key=key, reverse=True)

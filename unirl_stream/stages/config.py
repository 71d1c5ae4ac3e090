"""Recipe section ``[pipeline]``: workers, staleness, batching, placement."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta


class Placement(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Ray resources of one stage's workers (fractions share a GPU)."""

    num_cpus: Annotated[float, Meta(ge=0)] = 0.0
    """Ray CPUs per worker."""
    num_gpus: Annotated[float, Meta(ge=0)] = 0.0
    """Ray GPUs per worker (fractions share a GPU)."""
    resources: dict[str, float] = {}
    """Custom Ray resources, e.g. ``{"rollout_node" = 1}`` to pin to labelled nodes."""
    gpu_ids: list[int] = []
    """Single-host shortcut: CUDA devices for this stage's workers (round-robin)."""


class TrainerPlacement(Placement, forbid_unknown_fields=True, kw_only=True):
    """Placement of the trainer's ranks, and how the group talks."""

    sharding: Literal["replicate", "fsdp"] = "replicate"
    """Memory mode of a trainer group: ``replicate`` (each rank holds the whole model; LoRA
    gradients are all-reduced) or ``fsdp`` (FSDP2 per transformer block of every expert: the
    frozen bf16 base and the fp32 LoRA masters are sharded over the ranks)."""
    collective_timeout_s: Annotated[float, Meta(gt=0)] = 60.0
    """Longest wait in any collective of the trainer group: a rank that died ends the group
    within this (no rank hangs). Above the longest skew between ranks in one step."""


class StageSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """An extra stage from a plugin, e.g. a filter between reward and trainer."""

    name: str
    """Stage plugin (entry point group ``unirl_stream.stages``)."""
    workers: Annotated[int, Meta(ge=1)] = 1
    placement: Placement = msgspec.field(default_factory=Placement)
    options: dict[str, Any] = {}


class PipelineConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    backend: Literal["ray", "local"] = "ray"
    """``ray``: every worker is a Ray actor (a local cluster, or ``--address``);
    ``local``: every worker is a thread of the driver process (tests, debugging)."""
    mode: Literal["async", "sync"] = "async"
    """``sync`` puts a barrier between rounds (the baseline); ``async`` has none."""
    max_staleness: Annotated[int, Meta(ge=0)] = 1
    """eta: a sample from policy version u is trained at version v only if v - u <= eta."""
    rollout_workers: Annotated[int, Meta(ge=1)] = 1
    reward_workers: Annotated[int, Meta(ge=1)] = 1
    trainer_workers: Annotated[int, Meta(ge=1)] = 1
    """Ranks of the data-parallel trainer group (Ray actors in one placement group, one
    torch.distributed process group: NCCL on CUDA, gloo on CPU). Rank 0 batches and
    publishes; every rank replays its shard of each batch. ``backend = "local"``: 1."""
    groups_per_step: Annotated[int, Meta(ge=1)] = 2
    """Prompt groups per optimizer batch (batch = groups_per_step * samples_per_prompt)."""
    rollout_batch: Annotated[int, Meta(ge=1)] = 4
    """Trajectories a producer samples in one forward batch."""
    reward_batch: Annotated[int, Meta(ge=1)] = 8
    """Samples a reward worker scores in one call (across prompt groups)."""
    publish_every: Annotated[int, Meta(ge=1)] = 1
    """Optimizer steps between weight publications (each bumps the policy version)."""
    train_requires: list[str] = msgspec.field(default_factory=lambda: ["advantage"])
    """Fields a sample needs before the trainer may claim it; a plugin stage that writes
    a field (e.g. a filter's ``keep``) joins the chain by adding it here."""
    train_filters: list[str] = []
    """uint8 fields that must be 1 for a sample to be trained (e.g. a filter stage's
    ``keep``); samples with 0 end as dropped, reason ``filtered: <field>=0``. Implies
    ``train_requires``."""
    stages: list[StageSpec] = []
    rollout: Placement = msgspec.field(default_factory=Placement)
    reward: Placement = msgspec.field(default_factory=Placement)
    trainer: TrainerPlacement = msgspec.field(default_factory=TrainerPlacement)
    tick_s: Annotated[float, Meta(gt=0)] = 1.0
    """How often workers report metrics."""
    max_restarts: Annotated[int, Meta(ge=0)] = 3
    """Ray restarts of a crashed rollout/reward actor."""
    stall_timeout_s: Annotated[float, Meta(gt=0)] = 600.0
    """The run fails (exit 1, with the gate, the store's queues and each stage's idle time)
    when no stage makes progress for this long. Sized for real models: keep it above the
    longest single step of any stage (a trainer step on a large batch)."""

"""Contracts of the metrics bus: the events stages and the driver send, and their sinks.

Events are msgspec Structs, tagged, sent as msgpack on the bus (``monitor/bus.py``) and
folded by the aggregator (``monitor/``); a stage always has a sink (``NullSink`` when
nothing listens), so no loop asks whether metrics are on. Imports nothing heavy.
"""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

from unirl_stream.api import StoreStats


class MetricEvent(msgspec.Struct, tag=True):
    """Base of everything on the metrics bus. ``t`` is time.time() at the sender."""

    run_id: str
    source: str  # e.g. "rollout/0", "trainer/0", "driver"
    t: float


class StageTick(MetricEvent, tag="stage"):
    """A stage worker's counters since its previous tick (sent about once a second)."""

    stage: str = ""
    worker: int = 0
    processed: int = 0
    dropped: int = 0
    busy_s: float = 0.0
    idle_s: float = 0.0
    policy_version: int = -1  # version the worker holds (producers), -1 if n/a
    task: str = ""  # the store task the stage claims from (its queue, as ``Stage.tasks`` declares)
    values: dict[str, float] = {}


class TrainStep(MetricEvent, tag="train"):
    step: int = 0
    policy_version: int = 0
    samples: int = 0
    loss: float = 0.0
    clip_frac: float = 0.0
    approx_kl: float = 0.0
    grad_norm: float = 0.0
    reward_mean: float = 0.0
    reward_std: float = 0.0
    reward_terms: dict[str, float] = {}
    staleness: list[int] = []  # staleness of each consumed sample
    rewards: list[float] = []  # reward of each trained sample (histograms)
    publish_latency_s: float = 0.0


class SampleOutcome(MetricEvent, tag="outcome"):
    """One ledger row: how a sample id ended (trained or dropped)."""

    sample_id: str = ""
    prompt_id: str = ""
    status: Literal["trained", "dropped"] = "trained"
    reason: str = ""
    behavior_version: int = 0
    trained_at_version: int = -1
    staleness: int = -1
    reward: float | None = None
    advantage: float | None = None


class StoreTick(MetricEvent, tag="store"):
    stats: StoreStats = msgspec.field(default_factory=StoreStats)


class MediaSample(MetricEvent, tag="media"):
    """A sample's media written under the run directory (paths relative to it)."""

    sample_id: str = ""
    group: str = ""
    prompt: str = ""
    version: int = 0  # the policy version that sampled it
    rank: str = ""  # "best", "median" or "worst" of its group, by reward
    reward: float = 0.0
    terms: dict[str, float] = {}  # unweighted value of each reward term
    advantage: float = 0.0
    staleness: int = 0  # trainer's version minus ``version`` when it was scored
    poster: str = ""  # PNG
    anim: str | None = None  # animated WebP of a video; None for an image
    frames: int = 1


METRIC_EVENT = StageTick | TrainStep | SampleOutcome | StoreTick | MediaSample


class MetricSink(Protocol):
    """Where metric events go (the bus, a file, wandb, nothing). Never blocks long."""

    def emit(self, event: MetricEvent) -> None: ...

    def close(self) -> None: ...


class NullSink:
    """The null object: stages always have a sink; no ``if sink:`` anywhere."""

    def emit(self, event: MetricEvent) -> None:
        return None

    def close(self) -> None:
        return None

"""The Snapshot: everything the live panel, ``monitor --json``, wandb and Prometheus show.

A Snapshot is what the aggregator publishes on its PUB socket (msgpack) and writes as a
``"pipeline"`` row of ``metrics.jsonl`` (JSON); both decode back into this Struct. Numbers
that are unknown so far are ``-1`` (versions, queue depths) or 0.0, never None, so the
panel and scripts always have a number to show.
"""

from __future__ import annotations

from typing import Any

import msgspec

from unirl_stream.api import TaskStats


class StageView(msgspec.Struct, kw_only=True):
    name: str
    workers_alive: int = 0
    workers_expected: int = 0  # from the recipe; 0 if not told
    samples_per_s: float = 0.0  # over the aggregator's window (default 10 s)
    processed: int = 0  # cumulative
    dropped: int = 0  # cumulative
    queue_depth: int = -1  # samples ready for this stage (-1: unknown)
    idle_frac: float = 0.0  # idle share of the workers' time in the window


class StalenessView(msgspec.Struct, kw_only=True):
    policy_version: int = -1  # the trainer's current policy version
    eta: int = 0  # max_staleness bound
    count: int = 0  # consumed samples seen
    mean: float = 0.0  # over all consumed samples
    max: int = 0
    last_mean: float = 0.0  # of the latest train step
    histogram: list[int] = []  # bins 0..eta, then one bin "> eta" (should stay 0)
    drops: dict[str, int] = {}  # dropped samples by reason
    producer_versions: dict[str, int] = {}  # "rollout/0" -> version it samples with


class LearningView(msgspec.Struct, kw_only=True):
    step: int = -1
    samples: int = 0  # cumulative trained samples
    reward_mean: float = 0.0
    reward_std: float = 0.0
    reward_terms: dict[str, float] = {}
    loss: float = 0.0
    clip_frac: float = 0.0
    approx_kl: float = 0.0
    grad_norm: float = 0.0
    publish_latency_s: float = 0.0


class StoreView(msgspec.Struct, kw_only=True):
    samples: int = 0
    bytes_used: int = 0
    budget_bytes: int = 0
    put_mb_s: float = 0.0  # from cumulative byte counters over the window
    get_mb_s: float = 0.0
    deleted_total: int = 0
    tasks: dict[str, TaskStats] = {}


class BusView(msgspec.Struct, kw_only=True):
    events: int = 0  # events applied (socket + in-process)
    decode_errors: int = 0
    sender_dropped: int = 0  # sum of workers' ZmqSink drop counters (last reported)
    pub_sent: int = 0
    pub_dropped: int = 0  # snapshots not sent because a subscriber was full
    subscribers: int = 0
    sink_errors: int = 0


class Snapshot(msgspec.Struct, kw_only=True):
    run_id: str = ""
    t: float = 0.0
    seq: int = 0
    uptime_s: float = 0.0
    finished: bool = False
    stages: list[StageView] = []
    staleness: StalenessView = msgspec.field(default_factory=StalenessView)
    learning: LearningView = msgspec.field(default_factory=LearningView)
    store: StoreView = msgspec.field(default_factory=StoreView)
    bus: BusView = msgspec.field(default_factory=BusView)

    def stage(self, name: str) -> StageView | None:
        return next((s for s in self.stages if s.name == name), None)


_MSGPACK_DEC = msgspec.msgpack.Decoder(Snapshot)
_MSGPACK_ENC = msgspec.msgpack.Encoder()


def snapshot_to_msgpack(snap: Snapshot) -> bytes:
    return _MSGPACK_ENC.encode(snap)


def snapshot_from_msgpack(data: bytes) -> Snapshot:
    return _MSGPACK_DEC.decode(data)


def snapshot_row(snap: Snapshot) -> dict[str, Any]:
    """The ``metrics.jsonl`` form: ``{"kind": "pipeline", **snapshot}``."""
    return {"kind": "pipeline", **msgspec.to_builtins(snap)}


def snapshot_from_row(row: dict[str, Any]) -> Snapshot:
    data = {k: v for k, v in row.items() if k != "kind"}
    return msgspec.convert(data, Snapshot)


def snapshot_json(snap: Snapshot) -> str:
    return msgspec.json.encode(snap).decode()

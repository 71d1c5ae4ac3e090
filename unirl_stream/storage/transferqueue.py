"""``transferqueue``: payloads in TransferQueue's storage units, claims in our index.

TransferQueue (0.1.x) runs a controller and SimpleStorageUnit actors in Ray; each process
talks to them over ZMQ through the ``transfer_queue`` KV API. This backend uses one
TransferQueue partition per store, keyed by sample id, for payloads (raw uint8 rows; the
dtype/shape header is our index's FieldInfo), and mirrors every ack into TransferQueue's
per-task consumption ledger.

Where our index complements TransferQueue (why claims are not TransferQueue fetches):
* TransferQueue marks samples consumed when it *hands them out*; there are no leases, and
  the only way back is ``reset_consumption`` of a whole task. Claims with lease expiry and
  per-sample release/ack need our index; TransferQueue records only the final acks.
* Its ready scan is a vectorised pass over every sample of the partition on each fetch
  (cost grows with the store); our ready queues make a claim O(n claimed).
* Group claims: its GRPO sampler assumes the N samples of a group sit at contiguous
  indices; our index groups by ``SampleMeta.group`` whatever the write order.
* Byte budget/backpressure: TransferQueue bounds sample *counts* only.

The ack mirror: ``tq_sampler.AckSampler`` is registered on the TransferQueue controller; an ack sends a
fetch for task ``<task>`` whose sampler selects exactly the acked keys, so TransferQueue marks
them consumed for that task (and would refuse a sample it already saw consumed).

Sizing for small machines: the controller and each storage unit ask Ray for one CPU, so the
default of two storage units hangs silently on ``ray.init(num_cpus=2)``; we start one.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any

import msgspec

from unirl_stream.api import StoreError
from unirl_stream.storage import codec
from unirl_stream.storage.base import (
    IndexedStore,
    Located,
    Plane,
    RayLink,
    columns_of,
    decode_options,
)
from unirl_stream.storage.codec import FieldInfo, describe_ids

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from unirl_stream.storage.config import StoreConfig

# TransferQueue sizes its torch thread pools for 8 cores and warns on every call otherwise.
# (This module imports nothing heavy: transfer_queue loads on first use, so that decoding
# ``[store] options`` with ``Config`` stays fast.)
os.environ.setdefault("TQ_NUM_THREADS", str(min(8, os.cpu_count() or 1)))


class TransferQueueOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    num_storage_units: int = 1
    """SimpleStorageUnit actors (1 CPU each in Ray); one fits a 2-CPU machine."""
    mirror_acks: bool = True
    """Record acks in TransferQueue's per-task consumption ledger (one extra call per ack)."""


def _tq() -> Any:
    """transfer_queue, connected in this process (to the controller a launch started)."""
    try:
        import transfer_queue as tq
        from transfer_queue import interface
    except ImportError as e:
        raise StoreError(
            f"the transferqueue backend needs the extra: pip install 'unirl-stream[transferqueue]' ({e})"
        ) from None
    if interface._TQ_CLIENT is None and not interface._init_from_existing():
        raise StoreError("no TransferQueue controller is running in this Ray cluster")
    return tq


class TQPlane(Plane):
    def __init__(self, partition: str, mirror_acks: bool) -> None:
        self.partition = partition
        self.mirror_acks = mirror_acks

    def write(self, ids: list[str], cols: dict[str, torch.Tensor], infos: dict[str, FieldInfo]) -> Any:
        if not cols:
            return None
        from tensordict import TensorDict

        td = TensorDict({n: codec.rows(c) for n, c in cols.items()}, batch_size=[len(ids)])
        _tq().kv_batch_put(keys=ids, partition_id=self.partition, fields=td)
        return None

    def discard(self, locs: Any) -> None:
        """Nothing to undo: TransferQueue rows invisible to the index are never read."""

    def read(self, ids: list[str], fields: list[str], located: Located) -> dict[str, torch.Tensor]:
        unique = list(dict.fromkeys(ids))
        try:
            td = _tq().kv_batch_get(keys=unique, partition_id=self.partition, select_fields=fields)
        except (ValueError, RuntimeError) as e:
            raise StoreError(f"get of {describe_ids(ids)} from TransferQueue failed: {e}") from None
        pos = {sid: i for i, sid in enumerate(unique)}
        out = {}
        for name, infos, _ in columns_of(fields, located):
            value = td[name]
            # TransferQueue hands back jagged nested tensors even for equal shapes.
            got = value.unbind() if getattr(value, "is_nested", False) else list(value)
            out[name] = codec.assemble(name, ids, infos, [got[pos[sid]] for sid in ids])
        return out

    def deleted(self, ids: list[str], locs: list[Any]) -> None:
        _tq().kv_clear(keys=ids, partition_id=self.partition)

    def acked(self, task: str, ids: list[str]) -> None:
        if not self.mirror_acks:
            return
        client = _tq().get_client()
        client.get_meta(
            data_fields=[], batch_size=1, partition_id=self.partition, mode="fetch",
            task_name=task, sampling_config={"keys": ids},
        )


class TransferQueueStore(IndexedStore):
    """TransferQueue payload plane + our index actor; see the module docstring."""

    Config = TransferQueueOptions
    backend = "transferqueue"

    @classmethod
    def launch(cls, cfg: StoreConfig, options: Any = None, *, use_ray: bool) -> TransferQueueStore:
        opts = decode_options(cls.Config, options)
        if not use_ray:
            raise StoreError(
                "the transferqueue backend runs its servers as Ray actors: open it with "
                "use_ray=True (after ray.init()), or use backend 'memory' without Ray"
            )
        from unirl_stream.storage.controller import start_index_actor, stop_actor

        stops: list[Any] = []
        try:
            if _start_tq(opts):
                stops.append(_close_tq)
            actor = start_index_actor(int(cfg.budget_mb * 2**20), cfg.lease_s)
            stops.append(lambda: stop_actor(actor))
        except BaseException:
            for stop in reversed(stops):
                stop()
            raise
        plane = TQPlane(f"unirl-{uuid.uuid4().hex[:12]}", opts.mirror_acks)
        store = cls(RayLink(actor), plane, cfg.put_timeout_s)
        store._finalizers.extend(stops)
        store._finalizers.append(lambda: _drop_partition(plane.partition))
        return store


def _start_tq(opts: TransferQueueOptions) -> bool:
    """Start TransferQueue unless this Ray cluster runs it already; True if we started it."""
    import ray
    import transfer_queue as tq
    from omegaconf import OmegaConf

    if not ray.is_initialized():
        raise StoreError("use_ray=True but Ray is not initialized; call ray.init() first")
    try:
        controller = ray.get_actor("TransferQueueController", namespace="transfer_queue")
        started = False
    except ValueError:
        conf = OmegaConf.create({
            "controller": {"polling_mode": True},  # never block 5 s on a short fetch
            "backend": {
                "storage_backend": "SimpleStorage",
                "SimpleStorage": {"num_data_storage_units": opts.num_storage_units},
            },
        })
        tq.init(conf)
        controller = ray.get_actor("TransferQueueController", namespace="transfer_queue")
        started = True
    _tq()
    if opts.mirror_acks:
        from unirl_stream.storage.tq_sampler import AckSampler

        ray.get(controller.register_sampler.remote(AckSampler))
    return started


def _close_tq() -> None:
    import transfer_queue as tq

    tq.close()


def _drop_partition(partition: str) -> None:
    try:
        _tq().get_client().clear_partition(partition)
    except Exception:  # TransferQueue already closed: nothing left to drop
        pass

"""``memory``: the embedded default store (no external service).

* use_ray=False: index and payloads in this process (a clone per sample and field);
  a plain thread-safe object for in-process pipelines and tests.
* use_ray=True: the index is a Ray actor (``IndexServer``, num_cpus=0); payloads are Ray
  objects, one per sample and write, in the node's shared-memory object store. Readers
  get them zero-copy from shared memory and make the one copy that stacks a batch.

Who owns a payload object decides whether it survives its writer (Ray frees an object when
its owner process dies; ``ray.put(_owner=...)`` was removed in Ray 2.56):

* ``payload_owner = "controller"`` (default): the writer sends the bytes to the index actor,
  which puts them; samples outlive the producer that wrote them. Costs one more copy.
* ``payload_owner = "writer"``: the writer puts them itself (one copy less), and a sample's
  payloads are lost if its writer dies (reads then fail with StoreError naming the sample).
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from unirl_stream.api import StoreError
from unirl_stream.storage import codec
from unirl_stream.storage.base import IndexedStore, LocalLink, Located, Plane, RayLink, columns_of
from unirl_stream.storage.codec import FieldInfo, describe_ids

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from unirl_stream.storage.config import StoreConfig


class MemoryOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    payload_owner: Literal["controller", "writer"] = "controller"
    """Ray mode: who puts payloads into the object store (see the module docstring)."""


class LocalPlane(Plane):
    """In-process: the index's locations are private copies of each sample's tensors.

    Buffers of deleted or overwritten samples are kept (up to ``pool_bytes``) and reused for
    the next sample of the same dtype and shape, which in RL is nearly every sample: fresh
    memory costs a page fault per 4 KiB on every put (glibc maps each block of 128 KiB and
    more anew), which made a 1 MB put several times slower than the copy itself.
    """

    def __init__(self, pool_bytes: int = 256 * 2**20) -> None:
        self._pool: dict[tuple[Any, tuple[int, ...]], list[torch.Tensor]] = {}
        self._pooled, self._cap = 0, pool_bytes
        self._lock = threading.Lock()

    def _buffer(self, like: torch.Tensor) -> torch.Tensor:
        import torch

        with self._lock:
            bufs = self._pool.get((like.dtype, tuple(like.shape)))
            if bufs:
                buf = bufs.pop()
                self._pooled -= buf.nbytes
                return buf
        return torch.empty(like.shape, dtype=like.dtype)

    def write(self, ids: list[str], cols: dict[str, torch.Tensor], infos: dict[str, FieldInfo]) -> Any:
        # One buffer per sample and field, so deleting a sample frees its memory even when
        # the rest of its put batch stays.
        return [{name: self._buffer(col[i]).copy_(col[i]) for name, col in cols.items()}
                for i in range(len(ids))]

    def free(self, locs: list[Any]) -> None:
        # Only buffers nobody else holds go back to the pool: a reader that located a sample
        # before it left the index may still be copying out of it (the index hands out no
        # new references once a sample is gone, so the count can only fall).
        with self._lock:
            for t in locs:
                if sys.getrefcount(t) > _POOL_REFS or self._pooled + t.nbytes > self._cap:
                    continue
                self._pool.setdefault((t.dtype, tuple(t.shape)), []).append(t)
                self._pooled += t.nbytes

    def read(self, ids: list[str], fields: list[str], located: Located) -> dict[str, torch.Tensor]:
        import torch

        out = {}
        for name, infos, parts in columns_of(fields, located):
            codec.common_info(name, ids, infos)
            out[name] = torch.stack(parts)
        return out


# References to a freed buffer when only ``free`` holds it: the ``locs`` list, the loop
# variable and getrefcount's own argument.
_POOL_REFS = 3


# Samples up to this many payload bytes live inside the index actor instead of in Ray's
# object store: a plasma object costs more than the bytes, and they then travel inline in
# the put and locate replies (one actor call each way, no object-store round trip).
INLINE_MAX = 64 * 1024


class RayObjectPlane(Plane):
    """Payloads are Ray objects (one dict of uint8 rows per sample and write), or inline."""

    def __init__(self, owner: str) -> None:
        self.owner = owner

    def write(self, ids: list[str], cols: dict[str, torch.Tensor], infos: dict[str, FieldInfo]) -> Any:
        per_sample: list[dict[str, Any]] = [{} for _ in ids]
        for name, col in cols.items():
            for i, row in enumerate(codec.to_numpy_rows(col)):
                per_sample[i][name] = row  # numpy views: serialized without pickling bytes
        if self.owner == "controller":
            return per_sample  # the actor puts them (commit_payload)
        import ray

        return [p if _small(p) else dict.fromkeys(p, ray.put(p)) for p in per_sample]

    def put(
        self, link: Any, ids: list[str], cols: dict[str, torch.Tensor],
        infos: dict[str, FieldInfo], metas: Any, wait: float,
    ) -> list[Any]:
        """One index call when the budget has room (the common case), else two-phase."""
        payloads = self.write(ids, cols, infos)
        inline_max = INLINE_MAX if self.owner == "controller" else None
        replaced = link.call("put_now", ids, infos, metas, payloads, inline_max)
        if replaced is not None:
            return replaced
        token = link.reserve(ids, infos, metas, wait)  # blocks (backpressure)
        return self.commit_or_discard(link, token, payloads)

    def commit(self, link: Any, token: int, locs: Any) -> list[Any]:
        if self.owner == "controller":
            return link.call("commit_payload", token, locs, INLINE_MAX)
        return link.call("commit", token, locs)

    def read(self, ids: list[str], fields: list[str], located: Located) -> dict[str, torch.Tensor]:
        import ray

        refs = list(dict.fromkeys(
            loc for row in located for _, loc in row if isinstance(loc, ray.ObjectRef)
        ))
        try:
            values = ray.get(refs)
        except (ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError) as e:
            raise StoreError(
                f"get of {describe_ids(ids)}: a payload object is lost ({type(e).__name__}); "
                f"with payload_owner='writer' a sample dies with its writer"
            ) from None
        by_ref = dict(zip(refs, values, strict=True))
        out = {}
        for name, infos, locs in columns_of(fields, located):
            parts = [by_ref[loc][name] if isinstance(loc, ray.ObjectRef) else loc for loc in locs]
            out[name] = codec.assemble(name, ids, infos, parts)
        return out


def _small(payload: dict[str, Any]) -> bool:
    return sum(a.nbytes for a in payload.values()) <= INLINE_MAX


class MemoryStore(IndexedStore):
    """The embedded store; see the module docstring."""

    Config = MemoryOptions
    backend = "memory"

    @classmethod
    def launch(cls, cfg: StoreConfig, options: Any = None, *, use_ray: bool) -> MemoryStore:
        from unirl_stream.storage.base import decode_options

        opts = decode_options(cls.Config, options)
        budget = int(cfg.budget_mb * 2**20)
        if not use_ray:
            from unirl_stream.storage.index import SampleIndex

            return cls(LocalLink(SampleIndex(budget, cfg.lease_s)), LocalPlane(), cfg.put_timeout_s)
        from unirl_stream.storage.controller import start_index_actor, stop_actor

        actor = start_index_actor(budget, cfg.lease_s)
        store = cls(RayLink(actor), RayObjectPlane(opts.payload_owner), cfg.put_timeout_s)
        store._finalizers.append(lambda: stop_actor(actor))
        return store

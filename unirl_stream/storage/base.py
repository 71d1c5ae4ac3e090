"""One SampleStore implementation over (index link, payload plane); backends pick the two.

* The *link* reaches the metadata index: in-process (``LocalLink``) or a Ray actor
  (``RayLink``, a picklable handle). Every control-path call is one index call.
* The *plane* moves payload bytes: clones in this process, Ray's object store,
  TransferQueue storage units, or Mooncake segments. Planes are picklable and connect
  lazily, so a store handle pickled into another process / Ray actor just works.

A put is: validate + reserve budget (index) -> write payloads (plane) -> commit (index).
If the plane fails, the reservation is aborted; if the commit fails, the plane frees what it
wrote. Either way nothing of the batch becomes visible.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from unirl_stream.api import (
    Claim,
    FieldSpec,
    SampleMeta,
    StoreError,
    StoreFullError,
    StoreStats,
)
from unirl_stream.storage import codec
from unirl_stream.storage.codec import FieldInfo, describe_ids

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from tensordict import TensorDict

Located = list[list[tuple[FieldInfo, Any]]]


class LocalLink:
    """The index lives in this process (use_ray=False): plain, thread-safe calls."""

    def __init__(self, index: Any) -> None:
        self.index = index

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.index, method)(*args)

    def reserve(self, ids: list[str], infos: dict[str, FieldInfo], metas: Any, timeout: float) -> int:
        return self.index.reserve(ids, infos, metas, timeout)

    def __reduce__(self) -> Any:
        raise StoreError(
            "this store was opened with use_ray=False and lives in one process; open it with "
            "use_ray=True to share it with other processes or Ray actors"
        )


class RayLink:
    """The index is a Ray actor; this handle pickles (Ray actor handles do)."""

    # A blocked writer polls the actor in slices so it never pins an actor thread for long.
    RESERVE_SLICE_S: ClassVar[float] = 1.0

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def call(self, method: str, *args: Any) -> Any:
        import ray

        try:
            return ray.get(getattr(self.actor, method).remote(*args))
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None  # the index's own StoreError, with its message
            raise
        except ray.exceptions.RayActorError as e:
            raise StoreError(f"the store's index actor is gone ({e}); was the store shut down?") from None

    def reserve(self, ids: list[str], infos: dict[str, FieldInfo], metas: Any, timeout: float) -> int:
        import time

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                return self.call("reserve", ids, infos, metas, max(0.0, min(left, self.RESERVE_SLICE_S)))
            except StoreFullError:
                if time.monotonic() >= deadline:
                    raise


class Plane:
    """Default payload plane: the index's locations *are* the payloads (subclasses differ)."""

    def put(
        self, link: Any, ids: list[str], cols: dict[str, torch.Tensor],
        infos: dict[str, FieldInfo], metas: list[SampleMeta] | None, wait: float,
    ) -> list[Any]:
        """Reserve -> write -> commit; returns the locations the write replaced."""
        token = link.reserve(ids, infos, metas, wait)
        try:
            locs = self.write(ids, cols, infos)
        except BaseException as e:
            link.call("abort", token)
            if isinstance(e, StoreError):
                raise
            raise StoreError(f"put of {describe_ids(ids)}: writing payloads failed: {e}") from e
        return self.commit_or_discard(link, token, locs)

    def commit_or_discard(self, link: Any, token: int, locs: Any) -> list[Any]:
        try:
            return self.commit(link, token, locs)
        except BaseException:
            self.discard(locs)
            raise

    def write(self, ids: list[str], cols: dict[str, torch.Tensor], infos: dict[str, FieldInfo]) -> Any:
        raise NotImplementedError

    def commit(self, link: Any, token: int, locs: Any) -> list[Any]:
        return link.call("commit", token, locs)

    def discard(self, locs: Any) -> None:
        """Free what ``write`` wrote when the commit failed."""
        if locs:
            self.free([loc for sample in locs for loc in sample.values()])

    def read(self, ids: list[str], fields: list[str], located: Located) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def free(self, locs: list[Any]) -> None:
        """Free payloads the index no longer points at (overwritten fields)."""

    def acked(self, task: str, ids: list[str]) -> None:
        """``ids`` were consumed by ``task`` (backends with their own ledger record it)."""

    def deleted(self, ids: list[str], locs: list[Any]) -> None:
        """Samples were deleted from the index; ``locs`` are their payload locations."""
        self.free(locs)

    def close(self) -> None:
        """Close this process's connection (the servers keep running)."""


def columns_of(fields: list[str], located: Located) -> list[tuple[str, list[FieldInfo], list[Any]]]:
    """Regroup ``locate``'s per-sample rows into per-field (infos, locations)."""
    return [
        (name, [row[j][0] for row in located], [row[j][1] for row in located])
        for j, name in enumerate(fields)
    ]


class IndexedStore:
    """SampleStore over a link + a plane. See api.SampleStore for the contract."""

    Config: ClassVar[type | None] = None
    backend: ClassVar[str] = ""

    def __init__(self, link: Any, plane: Plane, put_timeout_s: float) -> None:
        self._link = link
        self._plane = plane
        self._put_timeout = put_timeout_s
        self._finalizers: list[Callable[[], None]] = []  # servers this object started

    # -- schema
    def declare(self, specs: Sequence[FieldSpec]) -> None:
        self._link.call("declare", list(specs))

    def register_task(self, task: str, requires: Sequence[str], by_group: bool = False) -> None:
        self._link.call("register_task", task, list(requires), bool(by_group))

    # -- writes
    def put(
        self,
        ids: Sequence[str],
        fields: TensorDict | Mapping[str, torch.Tensor],
        meta: Sequence[SampleMeta] | None = None,
        timeout: float | None = None,
    ) -> None:
        ids = list(ids)
        if not ids:
            return
        cols, infos = codec.columns(ids, fields)
        metas = list(meta) if meta is not None else None
        wait = self._put_timeout if timeout is None else float(timeout)
        replaced = self._plane.put(self._link, ids, cols, infos, metas, wait)
        if replaced:
            self._plane.free(replaced)

    def delete(self, ids: Sequence[str]) -> None:
        gone, locs = self._link.call("delete", list(ids))
        if gone:
            self._plane.deleted(gone, locs)

    # -- claims
    def claim(self, task: str, n: int, lease_s: float | None = None) -> Claim | None:
        return self._link.call("claim", task, int(n), lease_s)

    def ack(self, claim: Claim, ids: Sequence[str] | None = None) -> None:
        acked, stolen = self._link.call("ack", claim, list(ids) if ids is not None else None)
        if acked:
            self._plane.acked(claim.task, acked)
        if stolen:
            raise StoreError(
                f"claim {claim.claim_id} of task {claim.task!r} expired before this ack; "
                f"{describe_ids(stolen)} was claimed again and will be consumed by that claim "
                f"(the claim's other samples were acked); raise lease_s"
            )

    def release(self, claim: Claim, ids: Sequence[str] | None = None) -> None:
        self._link.call("release", claim, list(ids) if ids is not None else None)

    # -- reads
    def get(self, ids: Sequence[str], fields: Sequence[str]) -> TensorDict:
        from tensordict import TensorDict

        ids, fields = list(ids), list(fields)
        located = self._link.call("locate", ids, fields)
        cols = self._plane.read(ids, fields, located) if ids else {}
        return TensorDict(cols, batch_size=[len(ids)])

    def meta(self, ids: Sequence[str]) -> list[SampleMeta]:
        return self._link.call("meta", list(ids))

    def stats(self) -> StoreStats:
        return self._link.call("stats")

    # -- lifecycle
    def close(self) -> None:
        self._plane.close()

    def shutdown(self) -> None:
        """Stop the servers this object started (only on the object ``launch`` returned)."""
        self.close()
        while self._finalizers:
            fn = self._finalizers.pop()
            try:
                fn()
            except Exception:  # a half-dead server must not stop the others from stopping
                pass

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_finalizers"] = []  # a pickled handle owns no servers
        return state

    def __enter__(self) -> IndexedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def decode_options(config_type: type, options: Any) -> Any:
    """Accept a decoded Config, a plain dict (e.g. straight from a recipe) or None."""
    if isinstance(options, config_type):
        return options
    try:
        return msgspec.convert(dict(options or {}), config_type)
    except msgspec.ValidationError as e:
        from unirl_stream.api import UserInputError

        raise UserInputError(f"[store] options: {e}") from None

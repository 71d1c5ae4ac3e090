"""The index as a Ray actor (num_cpus=0, threaded), shared by every Ray-mode backend.

Threaded (``max_concurrency``) because a writer waiting for budget holds one call open
(in slices, see RayLink.reserve) while others must still ack and delete; the index is
thread-safe. Extra methods serve backends that keep state next to the index:
``commit_payload`` (memory: the actor puts payloads into Ray's object store itself so that it
owns them) and a Mooncake segment holder (mooncake: the actor mounts the memory segment
that every other client writes into, so no payload depends on a writer process staying up).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from unirl_stream.api import StoreFullError
from unirl_stream.storage.index import SampleIndex

MAX_CONCURRENCY = 64


class IndexServer(SampleIndex):
    """SampleIndex plus the hooks that backends need on the actor side."""

    def __init__(self, budget_bytes: int, lease_s: float) -> None:
        super().__init__(budget_bytes, lease_s)
        self._holder: Any = None

    def ping(self) -> bool:
        return True

    def commit_payload(self, token: int, payloads: Sequence[Mapping[str, Any]], inline_max: int) -> list[Any]:
        """Own the payloads: one ray.put per sample, made here, so this actor is the owner
        (samples of at most ``inline_max`` bytes are kept in this process instead).

        Ray 2.56 removed ``ray.put(_owner=...)``; an object is owned by the process that
        put it and is lost when that process dies. Writers therefore pass the bytes to this
        actor (one copy into the object store, made here) instead of putting them themselves.
        """
        import ray

        locs: list[dict[str, Any]] = []
        try:
            for p in payloads:
                if sum(a.nbytes for a in p.values()) <= inline_max:
                    # Copied: the arrays may be views of the call's argument buffer.
                    locs.append({name: a.copy() for name, a in p.items()})
                else:
                    locs.append(dict.fromkeys(p, ray.put(dict(p))))
        except BaseException:
            self.abort(token)
            raise
        return self.commit(token, locs)

    def put_now(
        self, ids: Sequence[str], infos: Any, metas: Any, payloads: Any, inline_max: int | None
    ) -> list[Any] | None:
        """Reserve and commit in one call if the budget has room now; None if it is full.
        ``inline_max``: None when the writer owns its payloads, else ``commit_payload``'s.

        Saves the writer one round trip per put; validation errors raise as usual.
        """
        try:
            token = self.reserve(ids, infos, metas, 0.0)
        except StoreFullError:
            return None
        if inline_max is not None:
            return self.commit_payload(token, payloads, inline_max)
        return self.commit(token, payloads)

    # -- Mooncake segment holder -------------------------------------------------------
    def mount_mooncake(self, settings: Any) -> str:
        from unirl_stream.storage.mooncake_client import connect

        self._holder = connect(settings, segment=True)
        return self._holder.get_hostname()

    def unmount_mooncake(self) -> None:
        holder, self._holder = self._holder, None
        if holder is not None:
            holder.close()  # ~2 s: Mooncake unregisters the segment from the master

    def retire(self) -> None:
        """Unmount the segment (if any), then end this actor (a shutdown need not wait)."""
        import ray

        self.unmount_mooncake()
        ray.actor.exit_actor()


def start_index_actor(budget_bytes: int, lease_s: float) -> Any:
    """Start an IndexServer actor and wait until it answers (errors surface here)."""
    import ray

    if not ray.is_initialized():
        from unirl_stream.api import StoreError

        raise StoreError(
            "use_ray=True but Ray is not initialized in this process; call ray.init() first "
            "(or open the store with use_ray=False)"
        )
    cls = ray.remote(num_cpus=0, max_concurrency=MAX_CONCURRENCY)(IndexServer)
    actor = cls.remote(budget_bytes, lease_s)
    ray.get(actor.ping.remote())
    return actor


def stop_actor(actor: Any) -> None:
    import ray

    try:
        ray.kill(actor)
    except Exception:  # already gone
        pass

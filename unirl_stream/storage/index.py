"""The metadata index every store backend shares (pure Python, thread-safe).

Per sample: SampleMeta, fields (FieldInfo + an opaque payload location only the backend's
payload plane understands) and, per consumer task, ready/leased/consumed. Payload bytes
never pass through it. Each task's ready queue is updated by writes, releases and deletes
(see index_state), so ``claim(n)`` touches O(n) entries whatever the store holds, and
``stats()`` reads counters. Lease deadlines sit in a heap checked lazily on
claim/ack/release/stats: expired samples return to the front of the queue, no timer thread.

Writes are two-phase so a backend can move payloads in between: ``reserve`` validates the
whole batch and takes budget (waiting while it is full), then ``commit`` makes the fields
visible or ``abort`` gives the budget back. A failed reserve changes nothing.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from unirl_stream.api import (
    Claim,
    FieldSpec,
    SampleMeta,
    StoreError,
    StoreFullError,
    StoreStats,
    TaskStats,
)
from unirl_stream.storage.codec import FieldInfo, describe_ids
from unirl_stream.storage.index_checks import (
    check_batch,
    check_fits,
    claim_ids,
    norm_spec,
    overwritten_bytes,
)
from unirl_stream.storage.index_state import (
    FieldEntry,
    Lease,
    Reservation,
    Sample,
    Task,
    enter,
    leave,
    order_of,
)


class SampleIndex:
    """Metadata, readiness, leases and byte budget of one store."""

    def __init__(
        self,
        budget_bytes: int,
        lease_s: float = 120.0,
        clock: Callable[[], float] = time.time,
        reservation_ttl_s: float = 3600.0,
    ) -> None:
        self.budget = int(budget_bytes)
        self.lease_s = float(lease_s)
        self._clock = clock  # lease deadlines (Claim.deadline is time.time() seconds)
        self._res_ttl = reservation_ttl_s
        self._cond = threading.Condition(threading.Lock())
        self._uid = uuid.uuid4().hex[:8]
        self._seq = itertools.count(1)
        self._specs: dict[str, FieldSpec] = {}
        self._samples: dict[str, Sample] = {}
        self._tasks: dict[str, Task] = {}
        self._leases: dict[str, Lease] = {}
        self._heap: list[tuple[float, str]] = []
        self._pending: dict[int, Reservation] = {}
        self._pending_fields: dict[str, Counter[str]] = {}
        self._field_counts: Counter[str] = Counter()
        self._used = 0
        self._reserved = 0
        self._put_total = 0
        self._get_total = 0
        self._deleted = 0

    # ------------------------------------------------------------------ schema
    def declare(self, specs: Sequence[FieldSpec]) -> None:
        with self._cond:
            for spec in specs:
                spec = norm_spec(spec)
                old = self._specs.get(spec.name)
                if old is not None and old != spec:
                    raise StoreError(
                        f"field {spec.name!r} is already declared as {old}; cannot redeclare "
                        f"it as {spec}"
                    )
                self._specs[spec.name] = spec

    def register_task(self, task: str, requires: Sequence[str], by_group: bool = False) -> None:
        req = frozenset(requires)
        with self._cond:
            old = self._tasks.get(task)
            if old is not None:
                if old.requires != req or old.by_group != by_group:
                    raise StoreError(
                        f"task {task!r} is already registered with requires="
                        f"{sorted(old.requires)}, by_group={old.by_group}"
                    )
                return
            t = self._tasks[task] = Task(req, by_group)
            for sid, s in self._samples.items():  # once per task, not per claim
                enter(sid, s, task, t)

    # ------------------------------------------------------------------ writes
    def reserve(
        self,
        ids: Sequence[str],
        infos: Mapping[str, FieldInfo],
        metas: Sequence[SampleMeta] | None,
        timeout: float,
    ) -> int:
        """Validate a write and take its bytes from the budget; returns a token for commit."""
        ids = tuple(ids)
        infos = dict(infos)
        metas_l: list[SampleMeta | None] = list(metas) if metas is not None else [None] * len(ids)
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while True:
                self._expire_reservations()
                check_batch(self._specs, self._samples, self._pending_fields, ids, infos, metas_l)
                per_sample = sum(i.nbytes for i in infos.values())
                need = per_sample * len(ids)
                check_fits(ids, per_sample, need, self.budget)
                net = need - overwritten_bytes(self._samples, ids, infos)
                if self._used + self._reserved + net <= self.budget or net <= 0:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreFullError(
                        f"put of {describe_ids(ids)} ({need} bytes) waited "
                        f"{timeout:.1f}s for budget: {self._used} of {self.budget} bytes used, "
                        f"{self._reserved} reserved; consumers must ack+delete samples, or "
                        f"raise [store] budget_mb"
                    )
                self._cond.wait(left)
            token = next(self._seq)
            self._pending[token] = Reservation(
                ids, infos, metas_l, need, time.monotonic() + self._res_ttl
            )
            self._reserved += need
            for sid in ids:
                self._pending_fields.setdefault(sid, Counter()).update(infos.keys())
            return token

    def _unpend(self, token: int) -> Reservation | None:
        res = self._pending.pop(token, None)
        if res is None:
            return None
        self._reserved -= res.nbytes
        for sid in res.ids:
            c = self._pending_fields[sid]
            c.subtract(res.infos.keys())
            if not +c:
                del self._pending_fields[sid]
        self._cond.notify_all()
        return res

    def _expire_reservations(self) -> None:
        now = time.monotonic()
        for token in [t for t, r in self._pending.items() if r.expires <= now]:
            self._unpend(token)

    def abort(self, token: int) -> None:
        with self._cond:
            self._unpend(token)

    def commit(self, token: int, locs: Sequence[Mapping[str, Any]] | None) -> list[Any]:
        """Make a reserved write visible; returns payload locations it replaced (to free)."""
        with self._cond:
            res = self._unpend(token)
            if res is None:
                raise StoreError(
                    f"write reservation {token} expired or was aborted before commit; "
                    f"nothing of its batch was written"
                )
            gone = [sid for sid, m in zip(res.ids, res.metas, strict=True)
                    if m is None and sid not in self._samples]
            if gone:
                raise StoreError(f"sample {gone[0]!r} was deleted while being written; not written")
            replaced: list[Any] = []
            for i, sid in enumerate(res.ids):
                sample_locs = locs[i] if locs is not None else {}
                self._commit_one(sid, res, i, sample_locs, replaced)
            self._put_total += res.nbytes
            return replaced

    def _commit_one(
        self, sid: str, res: Reservation, i: int, locs: Mapping[str, Any], replaced: list[Any]
    ) -> None:
        s = self._samples.get(sid)
        if s is None:
            meta = res.metas[i]
            assert meta is not None  # check_batch demands meta on a first write
            s = self._samples[sid] = Sample(meta, order_of(sid))
        new = False
        for name, info in res.infos.items():
            old = s.fields.get(name)
            if old is not None:
                replaced.append(old.loc)
                s.nbytes -= old.info.nbytes
                self._used -= old.info.nbytes
            else:
                self._field_counts[name] += 1
                new = True
            s.fields[name] = FieldEntry(info, locs.get(name))
            s.nbytes += info.nbytes
            self._used += info.nbytes
        if new or not res.infos:
            for task, t in self._tasks.items():
                enter(sid, s, task, t)

    # ------------------------------------------------------------------ claims
    def _task(self, task: str) -> Task:
        t = self._tasks.get(task)
        if t is None:
            known = ", ".join(sorted(self._tasks)) or "none"
            raise StoreError(f"unknown task {task!r} (registered: {known}); call register_task")
        return t

    def claim(self, task: str, n: int, lease_s: float | None = None) -> Claim | None:
        with self._cond:
            t = self._task(task)
            now = self._clock()
            self._expire(now)
            if n <= 0 or not t.ready:
                return None
            ids: list[str] = []
            if t.by_group:
                for _ in range(min(n, len(t.ready))):
                    g, _ = t.ready.popitem(last=False)
                    mem = t.members.pop(g)
                    t.ready_samples -= len(mem)
                    ids.extend(sorted(mem, key=lambda x: self._samples[x].order))
            else:
                for _ in range(min(n, len(t.ready))):
                    ids.append(t.ready.popitem(last=False)[0])
            cid = f"{self._uid}:{next(self._seq)}"
            deadline = now + (self.lease_s if lease_s is None else lease_s)
            for sid in ids:
                self._samples[sid].leased[task] = cid
            t.leased += len(ids)
            self._leases[cid] = Lease(task, dict.fromkeys(ids), deadline)
            heapq.heappush(self._heap, (deadline, cid))
            return Claim(task=task, claim_id=cid, ids=tuple(ids), deadline=deadline)

    def _expire(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, cid = heapq.heappop(self._heap)
            lease = self._leases.pop(cid, None)
            if lease is not None:
                self._give_back(lease, list(lease.ids))

    def _give_back(self, lease: Lease, ids: Sequence[str]) -> None:
        t = self._tasks[lease.task]
        # Released samples are the oldest: the front of the queue keeps staleness low.
        # Reversed, so that pushing each to the front keeps their claim order.
        for sid in reversed(ids):
            del lease.ids[sid]
            s = self._samples[sid]
            del s.leased[lease.task]
            t.leased -= 1
            enter(sid, s, lease.task, t, front=True)

    def ack(self, claim: Claim, ids: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
        """Mark samples consumed by the claim's task.

        Returns ``(acked, stolen)``: the ids consumed by this call (repeats and deleted ids
        are skipped: acks are idempotent) and the ids whose lease expired and that another
        claim holds now (not acked here; the store raises StoreError naming them).
        """
        with self._cond:
            t = self._task(claim.task)
            self._expire(self._clock())
            todo = claim_ids(claim, ids)
            lease = self._leases.get(claim.claim_id)
            acked: list[str] = []
            stolen: list[str] = []
            for sid in todo:
                s = self._samples.get(sid)
                if s is None or claim.task in s.done:
                    continue
                if lease is not None and sid in lease.ids:
                    del lease.ids[sid]
                    del s.leased[claim.task]
                    t.leased -= 1
                elif claim.task in s.leased:
                    stolen.append(sid)
                    continue
                else:  # lease expired or released, and nobody re-claimed it: a late ack
                    leave(sid, s, t)
                s.done.add(claim.task)
                t.consumed += 1
                acked.append(sid)
            if lease is not None and not lease.ids:
                del self._leases[claim.claim_id]
            return acked, stolen

    def release(self, claim: Claim, ids: Sequence[str] | None = None) -> None:
        with self._cond:
            self._task(claim.task)
            self._expire(self._clock())
            todo = claim_ids(claim, ids)
            lease = self._leases.get(claim.claim_id)
            if lease is None:
                return  # expired: already released
            self._give_back(lease, [sid for sid in todo if sid in lease.ids])
            if not lease.ids:
                del self._leases[claim.claim_id]

    # ------------------------------------------------------------------ reads, deletes
    def locate(
        self, ids: Sequence[str], fields: Sequence[str]
    ) -> list[list[tuple[FieldInfo, Any]]]:
        """(FieldInfo, payload location) per sample per field; StoreError names what's missing."""
        out: list[list[tuple[FieldInfo, Any]]] = []
        with self._cond:
            total = 0
            for sid in ids:
                s = self._sample(sid)
                row = []
                for name in fields:
                    f = s.fields.get(name)
                    if f is None:
                        raise StoreError(
                            f"sample {sid!r} has no field {name!r} (it has: "
                            f"{', '.join(sorted(s.fields)) or 'none'})"
                        )
                    row.append((f.info, f.loc))
                    total += f.info.nbytes
                out.append(row)
            self._get_total += total
        return out

    def _sample(self, sid: str) -> Sample:
        s = self._samples.get(sid)
        if s is None:
            raise StoreError(f"unknown sample id {sid!r} (never written, or deleted)")
        return s

    def meta(self, ids: Sequence[str]) -> list[SampleMeta]:
        with self._cond:
            return [self._sample(sid).meta for sid in ids]

    def delete(self, ids: Sequence[str]) -> tuple[list[str], list[Any]]:
        """Forget samples; returns the ids that existed and their payload locations."""
        freed: list[Any] = []
        gone: list[str] = []
        with self._cond:
            for sid in ids:
                s = self._samples.pop(sid, None)
                if s is None:
                    continue
                gone.append(sid)
                for task, t in self._tasks.items():
                    leave(sid, s, t)
                    cid = s.leased.get(task)
                    if cid is not None:
                        self._leases[cid].ids.pop(sid, None)
                        t.leased -= 1
                for name, f in s.fields.items():
                    self._field_counts[name] -= 1
                    if not self._field_counts[name]:
                        del self._field_counts[name]
                    freed.append(f.loc)
                self._used -= s.nbytes
                self._deleted += 1
            self._cond.notify_all()
        return gone, freed

    def stats(self) -> StoreStats:
        with self._cond:
            self._expire(self._clock())
            tasks = {
                name: TaskStats(
                    ready=t.ready_samples if t.by_group else len(t.ready),
                    leased=t.leased,
                    consumed=t.consumed,
                )
                for name, t in self._tasks.items()
            }
            return StoreStats(
                samples=len(self._samples),
                bytes_used=self._used,
                budget_bytes=self.budget,
                fields=dict(self._field_counts),
                tasks=tasks,
                put_bytes_total=self._put_total,
                get_bytes_total=self._get_total,
                deleted_total=self._deleted,
            )


__all__ = ["FieldInfo", "SampleIndex"]

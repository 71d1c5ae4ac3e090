"""Per-sample and per-task state of the index, and the O(1) readiness transitions.

A sample is *eligible* for a task when it has all the task's required fields and the task
has neither leased nor consumed it. Eligible samples sit in the task's ready queue (an
OrderedDict: O(1) append, pop-front, remove and move-to-front); a by_group task queues
group ids instead, and a group enters its queue once ``group_size`` members are eligible.
``enter``/``leave`` are the only two transitions; every write, claim, release, ack and
delete calls them for the samples it touches and nothing else.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from unirl_stream.api import SampleMeta, split_sample_id
from unirl_stream.storage.codec import FieldInfo


@dataclass(slots=True)
class FieldEntry:
    info: FieldInfo
    loc: Any


@dataclass(slots=True)
class Sample:
    meta: SampleMeta
    order: int  # k of "<group>::sample:<k>" (members of a group claim are ordered by it)
    fields: dict[str, FieldEntry] = field(default_factory=dict)
    nbytes: int = 0
    leased: dict[str, str] = field(default_factory=dict)  # task -> claim id
    done: set[str] = field(default_factory=set)  # tasks that acked it


@dataclass(slots=True)
class Task:
    requires: frozenset[str]
    by_group: bool
    ready: OrderedDict[str, None] = field(default_factory=OrderedDict)  # sample or group ids
    members: dict[str, dict[str, None]] = field(default_factory=dict)  # group -> eligible ids
    ready_samples: int = 0  # by_group: samples in ready groups
    leased: int = 0
    consumed: int = 0


@dataclass(slots=True)
class Lease:
    task: str
    ids: dict[str, None]  # still leased (not acked, released, deleted)
    deadline: float


@dataclass(slots=True)
class Reservation:
    ids: tuple[str, ...]
    infos: dict[str, FieldInfo]
    metas: list[SampleMeta | None]
    nbytes: int
    expires: float  # time.monotonic(); a writer that died never commits


def enter(sid: str, s: Sample, task: str, t: Task, front: bool = False) -> None:
    """Put ``sid`` in ``task``'s ready structures if it is eligible and not there yet."""
    if task in s.done or task in s.leased or not t.requires <= s.fields.keys():
        return
    if not t.by_group:
        if sid not in t.ready:
            t.ready[sid] = None
            if front:
                t.ready.move_to_end(sid, last=False)
        return
    g = s.meta.group
    mem = t.members.setdefault(g, {})
    if sid in mem:
        return
    mem[sid] = None
    if g in t.ready:
        t.ready_samples += 1
    elif len(mem) >= s.meta.group_size:
        t.ready[g] = None
        t.ready_samples += len(mem)
        if front:
            t.ready.move_to_end(g, last=False)

def leave(sid: str, s: Sample, t: Task) -> None:
    if not t.by_group:
        t.ready.pop(sid, None)
        return
    g = s.meta.group
    mem = t.members.get(g)
    if mem is None or sid not in mem:
        return
    del mem[sid]
    if g in t.ready:
        t.ready_samples -= 1
        if len(mem) < s.meta.group_size:
            del t.ready[g]
            t.ready_samples -= len(mem)
    if not mem:
        del t.members[g]


def order_of(sid: str) -> int:
    try:
        return split_sample_id(sid)[1]
    except ValueError:
        return 0

"""Property test: random put/claim/ack/release/lease-expiry/delete interleavings against a
deliberately naive model (recomputes readiness from scratch each step, O(N) everywhere).

The index's claim order is its own business; the model checks *which* samples may be
handed out (ready, whole groups, right counts) and then follows the index's choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from unirl_stream.api import Claim, SampleMeta, sample_id
from unirl_stream.storage.codec import FieldInfo
from unirl_stream.storage.index import SampleIndex

TASKS = {"score": (frozenset({"a"}), False), "train": (frozenset({"a", "b"}), True)}
INFO = {"a": FieldInfo("float32", (2,), 8), "b": FieldInfo("int64", (), 8)}
GROUP_SIZE = 3


@dataclass
class MSample:
    group: str
    fields: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    leased: dict[str, str] = field(default_factory=dict)


@dataclass
class MLease:
    task: str
    ids: set[str]
    deadline: float


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class IndexVsModel(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.clock = Clock()
        self.index = SampleIndex(budget_bytes=10**9, lease_s=5.0, clock=self.clock)
        for task, (req, by_group) in TASKS.items():
            self.index.register_task(task, sorted(req), by_group)
        self.samples: dict[str, MSample] = {}
        self.leases: dict[str, MLease] = {}
        self.claims: list[Claim] = []
        self.consumed = {t: 0 for t in TASKS}
        self.next_group = 0

    # ---------------------------------------------------------------- model helpers
    def eligible(self, sid: str, task: str) -> bool:
        s = self.samples[sid]
        return TASKS[task][0] <= s.fields and task not in s.done and task not in s.leased

    def ready(self, task: str) -> dict[str, list[str]]:
        """Claimable units: sample -> [sample], or group -> eligible members (if complete)."""
        elig = [sid for sid in self.samples if self.eligible(sid, task)]
        if not TASKS[task][1]:
            return {sid: [sid] for sid in elig}
        groups: dict[str, list[str]] = {}
        for sid in elig:
            groups.setdefault(self.samples[sid].group, []).append(sid)
        return {g: m for g, m in groups.items() if len(m) >= GROUP_SIZE}

    def expire(self) -> None:
        for cid, lease in list(self.leases.items()):
            if lease.deadline <= self.clock.now:
                for sid in lease.ids:
                    del self.samples[sid].leased[lease.task]
                del self.leases[cid]

    def write(self, ids: list[str], names: list[str], new: bool) -> None:
        infos = {n: INFO[n] for n in names}
        metas = [SampleMeta(self.samples_group(sid), GROUP_SIZE) for sid in ids] if new else None
        token = self.index.reserve(ids, infos, metas, timeout=0)
        self.index.commit(token, None)
        for sid in ids:
            if new:
                self.samples[sid] = MSample(group=sid.rpartition("::")[0])
            self.samples[sid].fields.update(names)

    @staticmethod
    def samples_group(sid: str) -> str:
        return sid.rpartition("::")[0]

    # ---------------------------------------------------------------- rules
    @rule(members=st.lists(st.integers(0, GROUP_SIZE - 1), min_size=1, max_size=GROUP_SIZE, unique=True),
          with_b=st.booleans())
    def put_new(self, members: list[int], with_b: bool) -> None:
        g = f"p:{self.next_group}@0"
        self.next_group += 1
        self.write([sample_id(g, k) for k in members], ["a", "b"] if with_b else ["a"], new=True)

    @precondition(lambda self: any("b" not in s.fields or len(s.fields) < 2 for s in self.samples.values()))
    @rule(data=st.data())
    def add_field(self, data: st.DataObject) -> None:
        """A later stage adds a field (or a group's missing member arrives)."""
        missing = [(sid, n) for sid, s in self.samples.items() for n in ("a", "b") if n not in s.fields]
        sid, name = data.draw(st.sampled_from(missing))
        self.write([sid], [name], new=False)

    @precondition(lambda self: self.next_group > 0)
    @rule(data=st.data())
    def add_member(self, data: st.DataObject) -> None:
        g = f"p:{data.draw(st.integers(0, self.next_group - 1))}@0"
        free = [sample_id(g, k) for k in range(GROUP_SIZE) if sample_id(g, k) not in self.samples]
        if free:
            self.write([free[0]], ["a", "b"], new=True)

    @rule(task=st.sampled_from(sorted(TASKS)), n=st.integers(1, 4))
    def claim(self, task: str, n: int) -> None:
        self.expire()
        units = self.ready(task)
        c = self.index.claim(task, n)
        if not units:
            assert c is None
            return
        assert c is not None and c.task == task and c.deadline == self.clock.now + 5.0
        want_units = min(n, len(units))
        chosen = [u for u, members in units.items() if set(members) <= set(c.ids)]
        assert len(chosen) == want_units, (c.ids, units)
        assert sorted(c.ids) == sorted(sid for u in chosen for sid in units[u])
        for sid in c.ids:
            self.samples[sid].leased[task] = c.claim_id
        self.leases[c.claim_id] = MLease(task, set(c.ids), c.deadline)
        self.claims.append(c)

    def pick(self, data: st.DataObject) -> tuple[Claim, list[str] | None]:
        c = data.draw(st.sampled_from(self.claims))
        ids = data.draw(st.none() | st.lists(st.sampled_from(list(c.ids)), unique=True))
        return c, ids

    @precondition(lambda self: self.claims)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        c, ids = self.pick(data)
        self.expire()
        lease = self.leases.get(c.claim_id)
        want_acked, want_stolen = [], []
        for sid in ids if ids is not None else c.ids:
            s = self.samples.get(sid)
            if s is None or c.task in s.done:
                continue
            if lease is not None and sid in lease.ids:
                lease.ids.discard(sid)
            elif c.task in s.leased:
                want_stolen.append(sid)
                continue
            s.leased.pop(c.task, None)
            s.done.add(c.task)
            self.consumed[c.task] += 1
            want_acked.append(sid)
        if lease is not None and not lease.ids:
            del self.leases[c.claim_id]
        assert self.index.ack(c, ids) == (want_acked, want_stolen)

    @precondition(lambda self: self.claims)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        c, ids = self.pick(data)
        self.expire()
        self.index.release(c, ids)
        lease = self.leases.get(c.claim_id)
        if lease is None:
            return
        for sid in set(ids if ids is not None else c.ids) & lease.ids:
            lease.ids.discard(sid)
            del self.samples[sid].leased[c.task]
        if not lease.ids:
            del self.leases[c.claim_id]

    @rule(dt=st.sampled_from([0.5, 2.0, 5.0, 7.5]))
    def tick(self, dt: float) -> None:
        self.clock.now += dt

    @precondition(lambda self: self.samples)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.samples)), min_size=1, max_size=3, unique=True))
        gone, _ = self.index.delete([*ids, "never:written"])
        assert gone == ids
        for sid in ids:
            for cid in self.samples.pop(sid).leased.values():
                self.leases[cid].ids.discard(sid)

    # ---------------------------------------------------------------- invariants
    @invariant()
    def stats_agree(self) -> None:
        stats = self.index.stats()  # also expires leases, like the model below
        self.expire()
        assert stats.samples == len(self.samples)
        assert stats.bytes_used == sum(8 * len(s.fields) for s in self.samples.values())
        for name in ("a", "b"):
            assert stats.fields.get(name, 0) == sum(name in s.fields for s in self.samples.values())
        for task in TASKS:
            ts = stats.tasks[task]
            assert ts.ready == sum(len(m) for m in self.ready(task).values()), task
            assert ts.leased == sum(task in s.leased for s in self.samples.values()), task
            assert ts.consumed == self.consumed[task], task


IndexVsModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_index_matches_model = IndexVsModel.TestCase

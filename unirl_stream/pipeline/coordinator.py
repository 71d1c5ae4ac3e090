"""The control plane: who may start work, which weights are current, how each sample ended.

One Coordinator per run (a Ray actor with ``num_cpus=0``, or a plain object in-process).
It never sees tensors: it hands out *group tickets* (which prompt, which group id, which
policy version), keeps the newest published weights (an opaque handle: a Ray ObjectRef or
bytes), and writes the two journals of the run directory:

- ``groups.jsonl``  one row per started group (written before sampling starts), so a crash
  can never hide a sample id;
- ``ledger.jsonl``  one row per sample id, exactly once: ``trained`` or ``dropped`` + reason.

Staleness gate (AReaL-style): with the trainer at version v, at most
``(v + eta + 1) * groups_per_version + dropped_groups`` groups may have been started, where
``groups_per_version = publish_every * groups_per_step``. A group started under this bound is
trained at a version <= v + eta, so the trainer rarely has to drop anything. Every group that
will never reach an optimizer step (too stale, filtered or NaN-dropped whole, lost in a crash)
gives its place back, otherwise a drop would starve the trainer (a departure from AReaL, whose
rollouts are never dropped after the gate). Invariant: groups started = groups trained in
steps + dropped_groups + groups in flight.

On resume the gate is rebuilt from the journals and the checkpoint, not from saved counters:
nothing is in flight any more, so ``dropped_groups = started - step * groups_per_step``, where
``started`` is every position ``groups.jsonl`` holds and ``step`` the checkpoint's optimizer step.

Stages report with ``heartbeat`` (each worker's processed count, pid and host); the driver's
stall watchdog reads ``progress`` and ``gate`` from here.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from unirl_stream.api import group_id, sample_id
from unirl_stream.control import Gate, GroupTicket
from unirl_stream.events import SampleOutcome


class ResumePoint(msgspec.Struct, frozen=True):
    """Where a resumed run's trainer starts: the checkpoint's optimizer step and version."""

    step: int = 0
    version: int = 0


class Worker(msgspec.Struct):
    """What the coordinator knows of one stage worker, from its heartbeats."""

    processed: int = 0
    last_progress: float = 0.0  # when ``processed`` last grew (or the worker first reported)
    pid: int = 0
    host: str = ""


class Coordinator:
    """``control.ControlPlane``, plus what the driver asks. A plain, thread-safe object;
    ``ray.remote(Coordinator)`` makes it the run's actor.

    Sync mode (``pipeline.mode = "sync"``, the baseline UniRL's loop is measured against)
    lives here alone: the gate admits one version's batch at a time, and the batch is
    ``batch_sealed`` once every group of it is in the store; the runner holds the stages
    after rollout until then."""

    def __init__(
        self,
        run_dir: str,
        prompt_ids: list[str],
        run_seed: int,
        shuffle: bool,
        group_size: int,
        groups_per_step: int,
        publish_every: int,
        max_staleness: int,
        mode: str = "async",
        resume: ResumePoint | None = None,
        journal_wait_s: float = 45.0,
    ) -> None:
        from unirl_stream.data import PromptCursor
        from unirl_stream.pipeline.rundir import JOURNAL_LOCK, RunDirLock

        self._lock = threading.Lock()
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # A killed driver's coordinator may still be alive for a few seconds: wait for it.
        self._journal_lock = RunDirLock(self.run_dir, JOURNAL_LOCK, "coordinator", journal_wait_s)
        self._prompts = prompt_ids
        self._cursor = PromptCursor(list(range(len(prompt_ids))), run_seed, shuffle)  # type: ignore[arg-type]
        self.group_size = group_size
        self.per_step = groups_per_step
        self.per_version = groups_per_step * publish_every
        self.eta = max_staleness
        self.mode = mode
        self.position, self.dropped_groups = 0, 0
        self.version = resume.version if resume else 0
        self._workers: dict[str, Worker] = {}
        self._board: dict[str, str] = {}
        self._weights: Any = None
        self._published_at = 0.0
        self._stopping = False
        self._finished: set[str] = set()
        self._errors: list[str] = []
        self._written = 0  # groups whose samples reached the store
        self._started_here = 0  # groups started by this coordinator (not before a resume)
        self._ledger = open(self.run_dir / "ledger.jsonl", "a", buffering=1, encoding="utf-8")
        self._groups = open(self.run_dir / "groups.jsonl", "a", buffering=1, encoding="utf-8")
        self._rebuild(resume or ResumePoint())

    # ------------------------------------------------------------------ gate
    def allowance(self) -> int:
        if self.mode == "sync":  # barrier: exactly one version's batch at a time
            return (self.version + 1) * self.per_version + self.dropped_groups
        return (self.version + self.eta + 1) * self.per_version + self.dropped_groups

    def start_group(self, worker: str) -> GroupTicket | None:
        """A ticket to sample one group now, or None (gate closed or stopping)."""
        with self._lock:
            if self._stopping or self.position >= self.allowance() or self._weights is None:
                return None
            pos = self.position
            self.position += 1
            self._started_here += 1
            idx = self._cursor.at(pos)
            pid = self._prompts[idx]  # type: ignore[index]
            gid = group_id(pid, pos)
            ticket = GroupTicket(pos, gid, idx, pid, self.group_size, self.version)
            row = {"group": gid, "position": pos, "prompt_id": pid, "size": self.group_size,
                   "version": self.version, "worker": worker, "t": time.time()}
            self._groups.write(json.dumps(row) + "\n")
            return ticket

    def group_written(self) -> None:
        with self._lock:
            self._written += 1

    def batch_sealed(self) -> bool:
        """Sync mode's barrier: this version's whole batch has been sampled (async: always)."""
        with self._lock:
            if self.mode != "sync":
                return True
            return self.position >= self.allowance() and self._written >= self._started_here

    # ------------------------------------------------------------------ weights
    def publish(self, version: int, weights: list[Any], as_object: bool = False) -> None:
        """``weights``: a one-element list (Ray passes an ObjectRef inside a list through
        unresolved). ``as_object``: put the bytes into Ray's object store from here, so the
        coordinator owns the object and it outlives the trainer that published it."""
        if as_object:
            import ray

            weights = [ray.put(weights[0])]
        with self._lock:
            if version < self.version:
                raise ValueError(f"published version {version} < current {self.version}")
            self.version, self._weights, self._published_at = version, weights[0], time.time()

    def latest(self, held: int) -> tuple[int, list[Any], float] | None:
        """Newest weights if newer than ``held`` (or nothing was held: held < 0)."""
        with self._lock:
            if self._weights is None or (held >= 0 and self.version <= held):
                return None
            return self.version, [self._weights], self._published_at

    # ------------------------------------------------------------------ ledger
    def finalize(self, rows: list[SampleOutcome]) -> int:
        """Record how samples ended; a sample id already final is ignored."""
        written = 0
        with self._lock:
            for row in rows:
                if row.sample_id in self._finished:
                    continue
                self._finished.add(row.sample_id)
                self._ledger.write(msgspec.json.encode(row).decode() + "\n")
                written += 1
        return written

    def drop_group(self, n: int = 1) -> None:
        """A whole group will never reach the trainer: widen the gate by one group."""
        with self._lock:
            self.dropped_groups += n

    def close_out(self, reason: str) -> int:
        """Drop every started sample id that has no ledger row yet (end of run / crash)."""
        rows = []
        for g in _read_jsonl(self.run_dir / "groups.jsonl"):
            for k in range(int(g["size"])):
                sid = sample_id(g["group"], k)
                if sid not in self._finished:
                    rows.append(SampleOutcome(run_id="", source="coordinator", t=time.time(),
                                              sample_id=sid, prompt_id=g["prompt_id"],
                                              status="dropped", reason=reason,
                                              behavior_version=int(g["version"])))
        return self.finalize(rows)

    # ------------------------------------------------------------------ run state
    def stop(self) -> None:
        with self._lock:
            self._stopping = True

    def stopping(self) -> bool:
        return self._stopping

    def heartbeat(self, source: str, processed: int, pid: int, host: str) -> bool:
        """A worker's running total of processed samples; returns ``stopping``."""
        now = time.time()
        with self._lock:
            w = self._workers.setdefault(source, Worker(last_progress=now))
            if processed != w.processed:
                w.processed, w.last_progress = processed, now
            w.pid, w.host = pid, host
            return self._stopping

    def workers(self) -> dict[str, Worker]:
        with self._lock:
            return {k: msgspec.structs.replace(w) for k, w in self._workers.items()}

    def post(self, key: str, value: str) -> None:
        """A small rendezvous board (e.g. the trainer group's address, posted by rank 0)."""
        with self._lock:
            self._board[key] = value

    def read(self, key: str) -> str | None:
        with self._lock:
            return self._board.get(key)

    def gate(self) -> Gate:
        with self._lock:
            return Gate(self.position, self.allowance(), self.version, self.dropped_groups)

    def progress(self) -> tuple[int, ...]:
        """Changes whenever any stage got anything done (the stall watchdog compares it)."""
        with self._lock:
            done = sum(w.processed for w in self._workers.values())
            return self.position, self.version, len(self._finished), self.dropped_groups, done

    def fail(self, message: str) -> None:
        """A stage hit an error that must end the run (e.g. a NaN reward with on_nan=fail)."""
        with self._lock:
            self._errors.append(message)
            self._stopping = True

    def errors(self) -> list[str]:
        return list(self._errors)

    def close(self) -> None:
        self._ledger.close()
        self._groups.close()
        self._journal_lock.release()

    def _rebuild(self, resume: ResumePoint) -> None:
        # Ids already in the ledger stay final; positions already journaled are never handed
        # out again (their ids would collide). Nothing of the earlier run is in flight now:
        # every started group that did not reach one of the checkpoint's optimizer steps
        # gives its place in the gate back, however it ended (trained after the checkpoint,
        # dropped, closed out at the end, lost in a crash).
        for row in _read_jsonl(self.run_dir / "ledger.jsonl"):
            self._finished.add(row["sample_id"])
        for g in _read_jsonl(self.run_dir / "groups.jsonl"):
            self.position = max(self.position, int(g["position"]) + 1)
        self.dropped_groups = max(0, self.position - resume.step * self.per_step)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line from a killed run
    return rows

"""Work that several processes (Ray actors) or threads do against one store in the tests.

Payloads are a deterministic function of the sample id, so a consumer can check every byte
it reads without talking to the writer.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

import torch

from unirl_stream.api import SampleMeta, sample_id

# "memory-local" is the in-process store (use_ray=False); the others run on Ray.
BACKENDS = ["memory-local", "memory-ray", "transferqueue", "mooncake"]
RAY_BACKENDS = BACKENDS[1:]


def payload(sid: str) -> dict[str, torch.Tensor]:
    """Fields of one sample, derived from its id (bf16 latents, fp32 log-probs)."""
    g = torch.Generator().manual_seed(zlib.crc32(sid.encode()))
    return {
        "latents": torch.randn(2, 3, 4, generator=g).to(torch.bfloat16),
        "log_probs": torch.randn(5, generator=g),
    }


def write_groups(store: Any, prefix: str, groups: int, group_size: int, batch: int) -> list[str]:
    """Write ``groups`` groups of ``group_size`` samples in put batches of ``batch`` samples."""
    ids = [sample_id(f"{prefix}:{g}@0", k) for g in range(groups) for k in range(group_size)]
    metas = [SampleMeta(group=sid.rpartition("::")[0], group_size=group_size) for sid in ids]
    for i in range(0, len(ids), batch):
        chunk = ids[i : i + batch]
        rows = [payload(sid) for sid in chunk]
        fields = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
        store.put(chunk, fields, metas[i : i + batch])
    return ids


def consume(store: Any, tasks: list[str], n: int, totals: dict[str, int], deadline_s: float) -> dict[str, Any]:
    """Claim, verify and ack until each task's consumed count reaches its total."""
    got: dict[str, list[str]] = {t: [] for t in tasks}
    bad: list[str] = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        stats = store.stats()
        todo = [t for t in tasks if stats.tasks[t].consumed < totals[t]]
        if not todo:
            break
        idle = True
        for task in todo:
            claim = store.claim(task, n, lease_s=60)
            if claim is None:
                continue
            idle = False
            td = store.get(list(claim.ids), ["latents", "log_probs"])
            for j, sid in enumerate(claim.ids):
                want = payload(sid)
                if not all(torch.equal(td[k][j], want[k]) for k in want):
                    bad.append(sid)
            store.ack(claim)
            got[task].extend(claim.ids)
        if idle:
            time.sleep(0.02)
    return {"got": got, "bad": bad}


class Worker:
    """Body of the test actors (wrapped with ray.remote(num_cpus=0) by the fixtures)."""

    def ping(self) -> bool:
        return True

    def write_groups(self, store: Any, prefix: str, groups: int, group_size: int, batch: int) -> list[str]:
        return write_groups(store, prefix, groups, group_size, batch)

    def consume(self, store: Any, tasks: list[str], n: int, totals: dict[str, int], deadline_s: float) -> dict[str, Any]:
        return consume(store, tasks, n, totals, deadline_s)

    def put(self, store: Any, ids: list[str], fields: dict[str, torch.Tensor], metas: list[SampleMeta]) -> None:
        store.put(ids, fields, metas)

    def claim(self, store: Any, task: str, n: int, lease_s: float) -> Any:
        return store.claim(task, n, lease_s=lease_s)


def new_worker(ray: Any) -> Any:
    """A fresh actor (num_cpus=0) for tests that kill it."""
    w = ray.remote(num_cpus=0)(Worker).remote()
    ray.get(w.ping.remote())
    return w

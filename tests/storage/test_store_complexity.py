"""Claim cost does not grow with the number of stored samples (no wall clock involved).

We count the Python lines executed (sys.settrace) by claim/ack/release/stats and by a
one-sample write, with 10 and with 100 000 samples stored. Any loop over stored samples
would multiply the count by ~10 000; the queues make it identical.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from unirl_stream.api import SampleMeta, sample_id
from unirl_stream.storage.codec import FieldInfo
from unirl_stream.storage.config import StoreConfig
from unirl_stream.storage.index import SampleIndex
from unirl_stream.storage.memory import MemoryStore

INFO = {"x": FieldInfo("float32", (), 4)}


def lines(fn: Callable[[], Any]) -> tuple[int, Any]:
    count = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        out = fn()
    finally:
        sys.settrace(None)
    return count, out


def fill(index: SampleIndex, n: int, group_size: int = 4) -> None:
    for start in range(0, n, 1000):
        ids = [sample_id(f"p:{i // group_size}@0", i % group_size) for i in range(start, min(n, start + 1000))]
        metas = [SampleMeta(sid.rpartition("::")[0], group_size) for sid in ids]
        index.commit(index.reserve(ids, INFO, metas, 0), None)


def costs(index: SampleIndex) -> dict[str, int]:
    out: dict[str, int] = {}
    out["claim"], c = lines(lambda: index.claim("t", 8))
    out["claim_group"], g = lines(lambda: index.claim("g", 2))
    assert c is not None and len(c.ids) == 8 and g is not None and len(g.ids) == 8
    out["release"], _ = lines(lambda: index.release(c, c.ids[:4]))
    out["ack"], _ = lines(lambda: index.ack(c))
    out["ack_group"], _ = lines(lambda: index.ack(g))
    out["stats"], _ = lines(index.stats)
    sid = "extra::sample:0"
    out["put"], _ = lines(lambda: index.commit(index.reserve([sid], INFO, [SampleMeta("extra", 1)], 0), None))
    out["delete"], _ = lines(lambda: index.delete([sid]))
    return out


def test_index_operations_cost_the_same_at_10_and_100000_samples() -> None:
    measured = {}
    for n in (12, 100_000):
        index = SampleIndex(budget_bytes=10**9)
        index.register_task("t", ["x"])
        index.register_task("g", ["x"], by_group=True)
        fill(index, n)
        assert index.stats().samples == n
        measured[n] = costs(index)
    small, big = measured[12], measured[100_000]
    for op in small:
        assert big[op] == small[op], (op, small[op], big[op])
    assert small["claim"] < 400  # and small in absolute terms: O(n claimed)


def test_claim_through_the_store_is_independent_of_size() -> None:
    counts = []
    for n in (20, 100_000):
        store = MemoryStore.launch(StoreConfig(budget_mb=64), use_ray=False)
        store.register_task("t", ["x"])
        for start in range(0, n, 5000):
            ids = [f"s:{i}" for i in range(start, min(n, start + 5000))]
            store.put(ids, {"x": torch.zeros(len(ids))}, [SampleMeta("g", 1)] * len(ids))
        count, claim = lines(lambda s=store: s.claim("t", 16))
        assert claim is not None and len(claim.ids) == 16
        counts.append(count)
        store.shutdown()
    assert counts[0] == counts[1], counts

"""Several processes on one store: concurrent writers/claimants, killed claimants and writers.

Ray backends run the work in Ray actors that receive the pickled store handle; the
in-process store (memory-local) runs the same work in threads.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest
import storage_actors
import torch
from storage_actors import RAY_BACKENDS, new_worker

from unirl_stream.api import SampleMeta, StoreError

GROUPS, GROUP_SIZE = 6, 4  # per writer


def _run_threads(fns: list[Any]) -> list[Any]:
    out: list[Any] = [None] * len(fns)

    def run(i: int) -> None:
        out[i] = fns[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_concurrent_writers_and_claimants_consume_each_sample_once(
    make_store: Any, backend: str, request: pytest.FixtureRequest
) -> None:
    store = make_store()
    store.register_task("reward", ["latents"])
    store.register_task("train", ["latents", "log_probs"], by_group=True)
    total = 2 * GROUPS * GROUP_SIZE
    totals = {"reward": total, "train": total}
    tasks = ["reward", "train"]
    if backend == "memory-local":
        results = _run_threads([
            lambda: storage_actors.write_groups(store, "wa", GROUPS, GROUP_SIZE, 3),
            lambda: storage_actors.write_groups(store, "wb", GROUPS, GROUP_SIZE, 5),
            lambda: storage_actors.consume(store, tasks, 3, totals, 90),
            lambda: storage_actors.consume(store, tasks, 2, totals, 90),
        ])
    else:
        import ray

        w = request.getfixturevalue("workers")
        refs = [
            w[0].write_groups.remote(store, "wa", GROUPS, GROUP_SIZE, 3),
            w[1].write_groups.remote(store, "wb", GROUPS, GROUP_SIZE, 5),
            w[2].consume.remote(store, tasks, 3, totals, 90),
            w[3].consume.remote(store, tasks, 2, totals, 90),
        ]
        results = ray.get(refs, timeout=150)
    written = results[0] + results[1]
    assert len(set(written)) == total
    for task in tasks:
        consumed = results[2]["got"][task] + results[3]["got"][task]
        counts = Counter(consumed)
        assert set(counts) == set(written), task
        assert max(counts.values()) == 1, f"{task}: consumed twice: {counts.most_common(3)}"
    assert results[2]["bad"] == [] and results[3]["bad"] == []
    st = store.stats()
    assert st.samples == total and st.tasks["reward"].consumed == total
    assert st.tasks["train"].consumed == total and st.tasks["train"].leased == 0
    if backend == "transferqueue":  # the ack mirror in TransferQueue's own ledger
        from unirl_stream.storage.transferqueue import _tq

        for task in ("reward", "train"):
            _, status = _tq().get_client().get_consumption_status(task, store._plane.partition)
            assert status is not None and int(status.sum()) == total, task


@pytest.mark.parametrize("backend", RAY_BACKENDS, indirect=True)
def test_killed_claimant_lease_expires_and_writer_death_loses_nothing(
    make_store: Any, ray_cluster: Any
) -> None:
    ray = ray_cluster
    store = make_store(lease_s=60)
    store.register_task("train", ["latents"], by_group=True)
    victim = new_worker(ray)
    ids = ray.get(victim.write_groups.remote(store, "kill", 2, 3, 6))
    big = torch.randn(1, 50_000)  # 200 KB: a Ray object / TransferQueue row / Mooncake object
    ray.get(victim.put.remote(store, ["kill:big"], {"big": big}, [SampleMeta("kill:big", 1)]))
    claim = ray.get(victim.claim.remote(store, "train", 1, 2.0))
    assert claim is not None and list(claim.ids) == ids[:3]
    ray.kill(victim)  # the writer and claimant dies holding the lease
    if time.time() < claim.deadline - 0.5:
        other = store.claim("train", 2)
        assert other is not None and list(other.ids) == ids[3:]  # the leased group is not handed out
        store.release(other)
    time.sleep(max(0.0, claim.deadline - time.time()) + 0.1)
    again = store.claim("train", 1)
    assert again is not None and list(again.ids) == ids[:3]  # expired: back at the front
    td = store.get(ids, ["latents", "log_probs"])  # payloads outlive their writer
    assert torch.equal(store.get(["kill:big"], ["big"])["big"], big)
    for j, sid in enumerate(ids):
        want = storage_actors.payload(sid)
        assert torch.equal(td["latents"][j], want["latents"]), sid
    store.ack(again)
    st = store.stats().tasks["train"]
    assert (st.consumed, st.leased, st.ready) == (3, 0, 3)


@pytest.mark.parametrize("backend", ["memory-local"], indirect=True)
def test_abandoned_claim_expires_in_process(make_store: Any) -> None:
    store = make_store()
    store.register_task("t", ["x"])
    store.put(["a:0", "a:1"], {"x": torch.zeros(2)}, [SampleMeta("a", 2)] * 2)
    claims = _run_threads([lambda: store.claim("t", 2, lease_s=0.5)])  # the claimant "dies"
    assert store.claim("t", 2) is None
    time.sleep(0.6)
    again = store.claim("t", 2)
    assert again is not None and list(again.ids) == list(claims[0].ids)
    with pytest.raises(StoreError, match="a:0"):
        store.ack(claims[0])  # the dead claim's late ack: its samples are leased again
    store.ack(again)
    assert store.stats().tasks["t"].consumed == 2


@pytest.mark.parametrize("backend", ["memory-ray"], indirect=True)
def test_writer_owned_payloads_die_with_their_writer(make_store: Any, ray_cluster: Any) -> None:
    """payload_owner='writer' trades a copy for this: reads then fail, naming the sample."""
    ray = ray_cluster
    store = make_store(payload_owner="writer")
    victim = new_worker(ray)
    ids = ["wo:0", "wo:1"]
    big = torch.arange(2 * 20_000, dtype=torch.float32).reshape(2, -1)  # 80 KB: not inline
    ray.get(victim.put.remote(store, ids, {"big": big}, [SampleMeta("wo", 2)] * 2))
    assert torch.equal(store.get(ids, ["big"])["big"], big)
    ray.kill(victim)
    deadline = time.monotonic() + 30
    while True:  # Ray notices the owner's death asynchronously
        try:
            store.get(ids, ["big"])
        except StoreError as e:
            assert ids[0] in str(e) and "writer" in str(e)
            break
        assert time.monotonic() < deadline, "payload of a dead writer still readable"
        time.sleep(0.2)
    store.delete(ids)  # the index stays consistent and usable
    assert store.stats().samples == 0

"""The SampleStore contract, run against every backend on real servers (see conftest.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import torch

from unirl_stream.api import FieldSpec, SampleMeta, StoreError, StoreFullError, sample_id


def raw(t: torch.Tensor) -> bytes:
    """The exact bytes of a tensor (any dtype, bf16 included; 0-d and empty too)."""
    flat = t.contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def metas(ids: list[str], group: str = "g@0", size: int | None = None) -> list[SampleMeta]:
    return [SampleMeta(group=group, group_size=size or len(ids)) for _ in ids]


CASES = [  # (dtype, per-sample shape): 0-d to 5-d, and empty
    (torch.bfloat16, (2, 3)),
    (torch.float16, (4,)),
    (torch.float32, ()),
    (torch.int64, (1, 2, 1, 2, 3)),
    (torch.uint8, (2, 2, 2, 3)),
    (torch.float32, (0, 3)),
    (torch.bfloat16, (3, 1, 2)),
]


def make_value(dtype: torch.dtype, shape: tuple[int, ...], batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(hash((str(dtype), shape)) % 2**31)
    if dtype.is_floating_point:
        return (torch.randn(batch, *shape, generator=g) * 100).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, (batch, *shape), generator=g, dtype=dtype)


def test_round_trip_is_byte_exact(make_store: Any) -> None:
    store = make_store()
    ids = [sample_id("rt@0", k) for k in range(3)]
    fields = {f"f{i}": make_value(dt, shape, 3) for i, (dt, shape) in enumerate(CASES)}
    big = torch.randn(1, 2 * 1024 * 1024)  # one 8 MiB sample
    store.put(ids, fields, metas(ids))
    store.put(["big"], {"big": big}, [SampleMeta("b@0", 1)])
    order = [ids[2], ids[0], ids[1], ids[0]]  # any order, repeats allowed
    td = store.get(order, list(fields))
    assert td.batch_size == torch.Size([4])
    for name, value in fields.items():
        want = value[[2, 0, 1, 0]]
        assert td[name].dtype == value.dtype and td[name].shape == want.shape, name
        assert raw(td[name]) == raw(want), name
    assert raw(store.get(["big"], ["big"])["big"]) == raw(big)
    assert store.meta([ids[1], "big"]) == [SampleMeta("g@0", 3), SampleMeta("b@0", 1)]
    st = store.stats()
    per_sample = sum(v[0].numel() * v.element_size() for v in fields.values())
    assert st.bytes_used == 3 * per_sample + big.numel() * 4
    assert st.put_bytes_total == st.bytes_used
    assert st.samples == 4 and st.fields["f0"] == 3 and st.fields["big"] == 1


def test_claim_ack_release_and_stats(make_store: Any) -> None:
    store = make_store()
    store.register_task("reward", ["latents"])
    store.register_task("train", ["latents", "reward"])
    ids = [sample_id("c@0", k) for k in range(5)]
    store.put(ids, {"latents": torch.zeros(5, 2)}, metas(ids))
    assert store.claim("train", 4) is None  # no reward yet: never blocks, nothing ready
    c1 = store.claim("reward", 2)
    assert c1 is not None and list(c1.ids) == ids[:2] and c1.task == "reward"
    assert c1.deadline > time.time()
    st = store.stats().tasks["reward"]
    assert (st.ready, st.leased, st.consumed) == (3, 2, 0)
    store.release(c1, [ids[1]])  # released samples go back (to the front)
    store.ack(c1, [ids[0]])
    c2 = store.claim("reward", 10)
    assert c2 is not None and list(c2.ids) == [ids[1], *ids[2:]]
    store.ack(c2)
    store.ack(c2)  # acks are idempotent
    assert store.claim("reward", 10) is None
    st = store.stats().tasks["reward"]
    assert (st.ready, st.leased, st.consumed) == (0, 0, 5)
    store.put(ids, {"reward": torch.arange(5.0)})  # a later stage adds a field
    c3 = store.claim("train", 5)
    assert c3 is not None and sorted(c3.ids) == sorted(ids)
    assert store.get(list(c3.ids), ["reward"])["reward"].tolist() == [
        float(ids.index(s)) for s in c3.ids
    ]
    store.ack(c3)
    stats = store.stats()
    assert stats.tasks["train"].consumed == 5 and stats.tasks["reward"].consumed == 5
    assert stats.fields == {"latents": 5, "reward": 5} and stats.samples == 5


def test_group_claims_hand_out_whole_groups(make_store: Any) -> None:
    store = make_store()
    store.register_task("train", ["x"], by_group=True)
    ga = [sample_id("ga@0", k) for k in range(3)]
    gb = [sample_id("gb@0", k) for k in range(3)]
    # Interleaved, out-of-order writes; group b completes first.
    store.put([ga[2], gb[1]], {"x": torch.ones(2, 1)}, [SampleMeta("ga@0", 3), SampleMeta("gb@0", 3)])
    store.put([gb[0], gb[2]], {"x": torch.ones(2, 1)}, metas(gb[:2], "gb@0", 3))
    assert store.stats().tasks["train"].ready == 3
    store.put([ga[0]], {"x": torch.ones(1, 1)}, metas(ga[:1], "ga@0", 3))
    c = store.claim("train", 5)
    assert c is not None and list(c.ids) == gb  # whole group, ordered by k
    assert store.claim("train", 1) is None  # ga still lacks a member
    store.put([ga[1]], {"x": torch.ones(1, 1)}, metas(ga[:1], "ga@0", 3))
    c2 = store.claim("train", 5)
    assert c2 is not None and list(c2.ids) == ga
    store.release(c2, [ga[0]])  # a partial group is not claimable by a group task
    assert store.claim("train", 1) is None
    store.release(c2)
    c3 = store.claim("train", 1)
    assert c3 is not None and list(c3.ids) == ga
    store.ack(c3)
    store.ack(c)
    assert store.stats().tasks["train"].consumed == 6


def test_backpressure_blocks_until_delete(make_store: Any) -> None:
    store = make_store(budget_mb=1 / 64)  # 16 KiB
    one = torch.zeros(1, 1024, dtype=torch.float32)  # 4 KiB per sample
    ids = [f"bp:{k}" for k in range(4)]
    store.put(ids, {"x": one.expand(4, -1)}, metas(ids))
    assert store.stats().bytes_used == 16 * 1024
    t0 = time.monotonic()
    with pytest.raises(StoreFullError, match="bp:late"):
        store.put(["bp:late"], {"x": one}, metas(["bp:late"]), timeout=0.5)
    assert time.monotonic() - t0 >= 0.5
    errors: list[BaseException] = []

    def late_put() -> None:
        try:
            store.put(["bp:late"], {"x": one + 7}, metas(["bp:late"]), timeout=60)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    writer = threading.Thread(target=late_put)
    writer.start()
    writer.join(1.0)
    assert writer.is_alive(), "put must block while the budget is full"
    store.delete([ids[0]])
    writer.join(60)
    assert not writer.is_alive() and not errors
    assert store.get(["bp:late"], ["x"])["x"].eq(7).all()
    assert store.stats().bytes_used == 16 * 1024 and store.stats().samples == 4


def test_delete_frees_bytes_and_forgets(make_store: Any) -> None:
    store = make_store()
    store.register_task("t", ["x"])
    ids = [f"d:{k}" for k in range(4)]
    store.put(ids, {"x": torch.ones(4, 8, dtype=torch.int64), "y": torch.ones(4, 2)}, metas(ids))
    assert store.stats().bytes_used == 4 * (64 + 8)
    c = store.claim("t", 1)
    store.delete([ids[0], ids[1], "never-written"])  # unknown ids are ignored
    st = store.stats()
    assert (st.samples, st.bytes_used, st.deleted_total) == (2, 2 * 72, 2)
    assert st.fields == {"x": 2, "y": 2}
    assert (st.tasks["t"].ready, st.tasks["t"].leased) == (2, 0)
    with pytest.raises(StoreError, match="d:0"):
        store.get([ids[0]], ["x"])
    store.ack(c)  # acking a deleted sample is harmless
    store.put([ids[0]], {"x": torch.zeros(1, 8, dtype=torch.int64)}, metas([ids[0]]))
    assert store.get([ids[0]], ["x"])["x"].sum() == 0  # the id can be reused
    store.delete(ids)
    assert store.stats().bytes_used == 0 and store.stats().samples == 0


def test_bad_input_is_named_and_loses_nothing(make_store: Any) -> None:
    store = make_store(budget_mb=1 / 16)  # 64 KiB
    store.declare([
        FieldSpec("lat", "bfloat16", (2, -1)),
        FieldSpec("adv", "torch.float32", (), overwritable=True),
    ])
    store.declare([FieldSpec("lat", "torch.bfloat16", (2, -1))])  # idempotent
    good = ["ok:0", "ok:1"]
    lat = torch.randn(2, 2, 5).to(torch.bfloat16)
    store.put(good, {"lat": lat, "adv": torch.tensor([1.0, 2.0])}, metas(good))
    before = store.stats()
    bad_calls = [
        (lambda: store.get(["ok:0", "nope:7"], ["lat"]), "nope:7"),
        (lambda: store.get(["ok:0"], ["missing_field"]), "ok:0"),
        (lambda: store.meta(["nope:8"]), "nope:8"),
        (lambda: store.put(["w:0"], {"lat": torch.zeros(1, 2, 5)}, metas(["w:0"])), "w:0"),
        (lambda: store.put(["w:1"], {"lat": torch.zeros(1, 3, 5).bfloat16()}, metas(["w:1"])), "w:1"),
        (lambda: store.put(["ok:1"], {"lat": lat[:1]}), "ok:1"),  # duplicate write
        (lambda: store.put(["new:0", "ok:0"], {"lat": lat}, metas(["a", "b"])), "ok:0"),
        (lambda: store.put(["new:1"], {"x": torch.zeros(1)}), "new:1"),  # first write needs meta
        (lambda: store.put(["huge:0"], {"x": torch.zeros(1, 20000)}, metas(["h"]), timeout=600), "huge:0"),
        (lambda: store.put(["s:0", "s:0"], {"x": torch.zeros(2)}, metas(["a", "b"])), "s:0"),
    ]
    for call, sid in bad_calls:
        t0 = time.monotonic()
        with pytest.raises(StoreError, match=sid) as info:
            call()
        assert not isinstance(info.value, StoreFullError), info.value
        assert time.monotonic() - t0 < 10, f"bad input must fail at once: {info.value}"
    assert store.stats() == before  # nothing of a bad batch was written
    store.put(["ok:0"], {"adv": torch.tensor([5.0])})  # overwritable field
    td = store.get(good, ["lat", "adv"])
    assert raw(td["lat"]) == raw(lat) and td["adv"].tolist() == [5.0, 2.0]
    assert store.stats().bytes_used == before.bytes_used
    store.put(["new:0"], {"lat": lat[:1]}, metas(["new:0"]))  # still usable
    assert store.stats().samples == 3


def test_unknown_task_and_claims(make_store: Any) -> None:
    store = make_store()
    with pytest.raises(StoreError, match="nosuch"):
        store.claim("nosuch", 1)
    store.register_task("t", ["x"])
    store.register_task("t", ["x"])  # idempotent
    with pytest.raises(StoreError, match="already registered"):
        store.register_task("t", ["y"])
    store.put(["u:0", "u:1"], {"x": torch.zeros(2)}, metas(["u:0", "u:1"]))
    c = store.claim("t", 1)
    assert c is not None
    with pytest.raises(StoreError, match="u:1"):
        store.ack(c, ["u:1"])  # not part of the claim
    store.ack(c)
    assert store.stats().tasks["t"].consumed == 1

"""The in-process memory store reuses the buffers of deleted samples, safely."""

from __future__ import annotations

import torch

from unirl_stream.api import SampleMeta
from unirl_stream.storage import open_store
from unirl_stream.storage.config import StoreConfig


def _store(budget_mb: float = 64):
    return open_store(StoreConfig(budget_mb=budget_mb), use_ray=False)


def _put(st, k: int, x: torch.Tensor) -> str:
    sid = f"g@{k}::sample:0"
    st.put([sid], {"x": x[None]}, [SampleMeta(f"g@{k}", 1, 0)])
    return sid


def _buffer_of(st, sid: str) -> torch.Tensor:
    return st._link.index._samples[sid].fields["x"].loc


def test_deleted_buffer_is_reused_and_reads_stay_intact():
    st = _store()
    a = _put(st, 0, torch.arange(256, dtype=torch.float32))
    ptr = _buffer_of(st, a).data_ptr()
    copy = st.get([a], ["x"])["x"]
    st.delete([a])
    b = _put(st, 1, torch.full((256,), 7.0))
    assert _buffer_of(st, b).data_ptr() == ptr  # same memory, no fresh allocation
    assert torch.equal(copy[0], torch.arange(256, dtype=torch.float32))  # earlier read untouched
    assert torch.equal(st.get([b], ["x"])["x"][0], torch.full((256,), 7.0))
    c = _put(st, 2, torch.zeros(128))  # another shape: a new buffer
    assert _buffer_of(st, c).data_ptr() != ptr


def test_buffer_still_referenced_is_not_reused():
    st = _store()
    a = _put(st, 0, torch.arange(256, dtype=torch.float32))
    reader_holds = _buffer_of(st, a)  # e.g. a reader that located it and is still copying
    st.delete([a])
    b = _put(st, 1, torch.full((256,), 7.0))
    assert _buffer_of(st, b).data_ptr() != reader_holds.data_ptr()
    assert torch.equal(reader_holds, torch.arange(256, dtype=torch.float32))


def test_pool_is_bounded():
    st = _store()
    st._plane._cap = 3 * 1024  # bytes: room for three 1 KiB buffers
    ids = [_put(st, k, torch.zeros(256)) for k in range(5)]
    st.delete(ids)
    assert st._plane._pooled == 3 * 1024
    assert sum(len(v) for v in st._plane._pool.values()) == 3

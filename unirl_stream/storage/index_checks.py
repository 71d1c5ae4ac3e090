"""Validation of one write batch against declared fields and what the index already holds.

Runs before anything is reserved or written, so a bad batch changes nothing. Every error
names the sample id (the first offending one) and says how to fix the call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from unirl_stream.api import Claim, FieldSpec, SampleMeta, StoreError
from unirl_stream.storage.codec import FieldInfo, describe_ids, dtype_name


def norm_spec(spec: FieldSpec) -> FieldSpec:
    """FieldSpec with a canonical dtype name ("torch.bfloat16" and "bfloat16" are equal)."""
    if not isinstance(spec, FieldSpec):
        raise StoreError(f"declare() takes FieldSpec values, got {type(spec).__name__}")
    return FieldSpec(spec.name, dtype_name(spec.dtype), tuple(spec.shape), spec.overwritable)


def _shape_ok(declared: tuple[int, ...], got: tuple[int, ...]) -> bool:
    return len(declared) == len(got) and all(d in (-1, g) for d, g in zip(declared, got, strict=True))


def check_fields(ids: Sequence[str], specs: Mapping[str, FieldSpec], infos: Mapping[str, FieldInfo]) -> None:
    for name, info in infos.items():
        spec = specs.get(name)
        if spec is None:
            continue  # undeclared fields are accepted as written
        if info.dtype != spec.dtype or not _shape_ok(spec.shape, info.shape):
            raise StoreError(
                f"{describe_ids(ids)}: field {name!r} is {info.dtype}{list(info.shape)} per "
                f"sample, but it is declared {spec.dtype}{list(spec.shape)} (-1 = any size)"
            )


def check_batch(
    specs: Mapping[str, FieldSpec],
    samples: Mapping[str, Any],
    pending: Mapping[str, Counter[str]],
    ids: Sequence[str],
    infos: Mapping[str, FieldInfo],
    metas: Sequence[SampleMeta | None],
) -> None:
    """Raise StoreError if any part of the batch may not be written."""
    if len(metas) != len(ids):
        raise StoreError(f"put: {len(ids)} ids but {len(metas)} SampleMeta values")
    seen: set[str] = set()
    for sid in ids:
        if not isinstance(sid, str):
            raise StoreError(f"sample ids must be str, got {sid!r}")
        if sid in seen:
            raise StoreError(f"sample {sid!r} appears twice in one put")
        seen.add(sid)
    check_fields(ids, specs, infos)
    for sid, meta in zip(ids, metas, strict=True):
        _check_meta(sid, samples.get(sid), meta)
        _check_duplicates(sid, samples.get(sid), pending.get(sid), specs, infos)


def _check_meta(sid: str, sample: Any, meta: SampleMeta | None) -> None:
    if meta is not None:
        if not isinstance(meta, SampleMeta):
            raise StoreError(f"sample {sid!r}: meta must be a SampleMeta, got {type(meta).__name__}")
        if meta.group_size < 1:
            raise StoreError(f"sample {sid!r}: group_size must be >= 1, got {meta.group_size}")
    if sample is None:
        if meta is None:
            raise StoreError(
                f"sample {sid!r} is not in the store: its first write needs meta "
                f"(SampleMeta(group=..., group_size=...)), or it was deleted"
            )
    elif meta is not None and meta != sample.meta:
        raise StoreError(
            f"sample {sid!r} already has meta {sample.meta}; a later write gave {meta} "
            f"(pass meta=None, or the same meta)"
        )


def _check_duplicates(
    sid: str,
    sample: Any,
    pending: Counter[str] | None,
    specs: Mapping[str, FieldSpec],
    infos: Mapping[str, FieldInfo],
) -> None:
    for name in infos:
        spec = specs.get(name)
        if spec is not None and spec.overwritable:
            continue
        if sample is not None and name in sample.fields:
            raise StoreError(
                f"sample {sid!r} already has field {name!r}; fields are written once "
                f"(declare FieldSpec(..., overwritable=True) to allow rewrites)"
            )
        if pending is not None and pending[name] > 0:
            raise StoreError(
                f"sample {sid!r}: field {name!r} is being written by another put right now"
            )


def check_fits(ids: Sequence[str], per_sample: int, need: int, budget: int) -> None:
    """A write that can never fit fails at once (waiting for deletes would not help)."""
    if per_sample > budget:
        raise StoreError(
            f"sample {ids[0]!r} needs {per_sample} bytes, more than the store's whole "
            f"budget of {budget} bytes; raise [store] budget_mb"
        )
    if need > budget:
        raise StoreError(
            f"put of {describe_ids(ids)} needs {need} bytes, more than the store's whole "
            f"budget of {budget} bytes; write smaller batches"
        )


def overwritten_bytes(samples: Mapping[str, Any], ids: Sequence[str], infos: Mapping[str, FieldInfo]) -> int:
    """Bytes an overwrite frees at commit (they count as available for it)."""
    old = 0
    for sid in ids:
        s = samples.get(sid)
        if s is not None:
            old += sum(s.fields[f].info.nbytes for f in infos if f in s.fields)
    return old


def claim_ids(claim: Claim, ids: Sequence[str] | None) -> list[str]:
    """The ids an ack/release names: all of the claim's, or a subset of them."""
    if ids is None:
        return list(claim.ids)
    mine = set(claim.ids)
    bad = [sid for sid in ids if sid not in mine]
    if bad:
        raise StoreError(f"sample {bad[0]!r} is not part of claim {claim.claim_id}")
    return list(ids)

"""Byte-exact tensor handling shared by every store backend.

A put batch is split into *columns* (one contiguous CPU tensor per field, batch dim first)
and described by a ``FieldInfo`` per field: dtype name, per-sample shape, per-sample bytes.
The FieldInfo is the (de)serialization header; it travels on the control path (the index),
so payload planes move raw bytes only (row ``i`` of a column = sample ``i``). Raw bytes,
not numpy dtypes, because numpy has no bfloat16; never pickle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from unirl_stream.api import StoreError

if TYPE_CHECKING:  # pragma: no cover
    import torch


class FieldInfo(msgspec.Struct, frozen=True, array_like=True):
    """What one sample's value of one field is: the header of its raw bytes."""

    dtype: str  # torch dtype name without the "torch." prefix, e.g. "bfloat16"
    shape: tuple[int, ...]  # per-sample shape
    nbytes: int  # per-sample payload bytes


def dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def torch_dtype(name: str) -> torch.dtype:
    import torch

    dt = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dt, torch.dtype):
        raise StoreError(f"unknown dtype {name!r} (expected a torch dtype name like 'bfloat16')")
    return dt


def columns(
    ids: Sequence[str], fields: Any
) -> tuple[dict[str, torch.Tensor], dict[str, FieldInfo]]:
    """Validate a put's fields: batch dim = len(ids); returns contiguous CPU columns + infos."""
    import torch

    items = fields.items() if isinstance(fields, Mapping) else _tensordict_items(fields)
    cols: dict[str, torch.Tensor] = {}
    infos: dict[str, FieldInfo] = {}
    where = _where(ids)
    for name, value in items:
        if not isinstance(value, torch.Tensor):
            raise StoreError(
                f"put {where}: field {name!r} is a {type(value).__name__}, not a torch.Tensor"
            )
        if value.dim() == 0 or value.shape[0] != len(ids):
            raise StoreError(
                f"put {where}: field {name!r} has shape {tuple(value.shape)}; its first "
                f"(batch) dim must equal the number of ids ({len(ids)})"
            )
        col = value.detach()
        if col.device.type != "cpu":
            col = col.cpu()
        col = col.contiguous()
        per_sample = tuple(col.shape[1:])
        nbytes = col[0].numel() * col.element_size() if len(ids) else 0
        cols[name] = col
        infos[name] = FieldInfo(dtype_name(col.dtype), per_sample, nbytes)
    return cols, infos


def _tensordict_items(fields: Any) -> list[tuple[str, Any]]:
    keys = getattr(fields, "keys", None)
    if keys is None:
        raise StoreError(f"put: fields must be a TensorDict or a mapping, got {type(fields)}")
    return [(k, fields[k]) for k in keys(include_nested=False, leaves_only=False)]


def describe_ids(ids: Sequence[str]) -> str:
    """"sample 'a'" or "sample 'a' (+3 more)": errors name the first sample id."""
    if not ids:
        return "no samples"
    more = f" (+{len(ids) - 1} more)" if len(ids) > 1 else ""
    return f"sample {ids[0]!r}{more}"


def _where(ids: Sequence[str]) -> str:
    return f"of {describe_ids(ids)}"


def rows(col: torch.Tensor) -> torch.Tensor:
    """A column as a [B, nbytes] uint8 view (no copy): row i holds sample i's raw bytes."""
    import torch

    b = col.shape[0]
    flat = col.reshape(b, -1) if b else col.reshape(0, 0)
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    # view(uint8) reinterprets the last dim; a zero-width row has nothing to reinterpret.
    if flat.shape[1] == 0:
        return torch.empty((b, 0), dtype=torch.uint8)
    return flat.view(torch.uint8)


def empty_column(info: FieldInfo, batch: int) -> torch.Tensor:
    """An uninitialised [batch, *shape] tensor to assemble samples into."""
    import torch

    return torch.empty((batch, *info.shape), dtype=torch_dtype(info.dtype))


def common_info(field: str, ids: Sequence[str], infos: Sequence[FieldInfo]) -> FieldInfo:
    """All samples of one read must agree on a field's dtype and shape (to stack them)."""
    first = infos[0]
    for sid, info in zip(ids, infos, strict=True):
        if info.dtype != first.dtype or info.shape != first.shape:
            raise StoreError(
                f"get: field {field!r} of sample {sid!r} is {info.dtype}{list(info.shape)} but "
                f"sample {ids[0]!r} has {first.dtype}{list(first.shape)}; read them separately"
            )
    return first


def assemble(
    field: str, ids: Sequence[str], infos: Sequence[FieldInfo], parts: Sequence[Any]
) -> torch.Tensor:
    """Stack per-sample raw bytes (uint8 tensors, numpy arrays or bytes) into one column.

    This is the one copy a read makes: the result is a fresh, writable tensor.
    """
    info = common_info(field, ids, infos)
    out = empty_column(info, len(ids))
    out_rows = rows(out)
    for i, (sid, part) in enumerate(zip(ids, parts, strict=True)):
        src = _as_uint8(part)
        if src.numel() != info.nbytes:
            raise StoreError(
                f"get: field {field!r} of sample {sid!r} came back with {src.numel()} bytes, "
                f"expected {info.nbytes}; the payload is damaged or was evicted"
            )
        if info.nbytes:
            out_rows[i].copy_(src)
    return out


def _as_uint8(part: Any) -> torch.Tensor:
    import warnings

    import torch

    if isinstance(part, torch.Tensor):
        return part.reshape(-1).view(torch.uint8) if part.numel() else part.reshape(0).to(torch.uint8)
    with warnings.catch_warnings():
        # Ray and Mooncake hand out read-only buffers; we only read them (then copy).
        warnings.simplefilter("ignore", UserWarning)
        if isinstance(part, bytes | bytearray | memoryview):
            return torch.frombuffer(part, dtype=torch.uint8) if len(part) else torch.empty(0, dtype=torch.uint8)
        return torch.from_numpy(part).reshape(-1).view(torch.uint8)


def to_numpy_rows(col: torch.Tensor) -> list[Any]:
    """Per-sample uint8 numpy views (no copy) of a column, for planes that take buffers."""
    r = rows(col)
    return [r[i].numpy() for i in range(r.shape[0])]

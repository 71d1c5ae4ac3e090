"""Per-sample seeded noise, independent of batch composition.

Every random draw of a sample comes from its own ``torch.Generator`` seeded by
``derive_seed(sample seed, purpose, step)``: the same seed gives bit-identical noise in any
batch, on any device (drawn on CPU in fp32, then moved), and different samples never share a
stream. Sample seeds themselves come from ``sample_seed(run seed, sample id)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

_MASK = (1 << 63) - 1  # seeds travel as int64 tensors


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts (stable across processes and Python runs)."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & _MASK


def sample_seed(run_seed: int, sample_id: str) -> int:
    """The seed of one sample: a function of the run seed and its id only."""
    return derive_seed("sample", run_seed, sample_id)


def gaussian(seeds: Sequence[int], shape: Sequence[int], purpose: str, step: int = -1,
             device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal noise [len(seeds), *shape] in fp32, row b drawn from seed b only.

    Drawn on the host; on a GPU it arrives by an asynchronous copy from pinned memory, so
    the caller never waits for the device's queue to drain."""
    import torch

    rows = []
    for s in seeds:
        g = torch.Generator(device="cpu").manual_seed(derive_seed(int(s), purpose, step))
        rows.append(torch.randn(tuple(shape), generator=g, dtype=torch.float32))
    out = torch.stack(rows)
    if torch.device(device).type == "cuda":
        return out.pin_memory().to(device, non_blocking=True)
    return out.to(device)

"""Recipe section ``[store]``: which backend holds samples, and its byte budget."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta


class StoreConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    backend: str = "memory"
    """Store plugin name (entry point group ``unirl_stream.stores``)."""
    budget_mb: Annotated[float, Meta(gt=0)] = 1024.0
    """Payload byte budget in MiB; writers block (backpressure) when it is full."""
    put_timeout_s: Annotated[float, Meta(gt=0)] = 600.0
    """How long a write waits for budget before failing with StoreFullError."""
    lease_s: Annotated[float, Meta(gt=0)] = 120.0
    """Claim lease: samples of a claimant that died become claimable again after this."""
    options: dict[str, Any] = {}
    """Backend options, decoded by the backend's own ``Config`` Struct."""

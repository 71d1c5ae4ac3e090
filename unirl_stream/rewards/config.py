"""Recipe section ``[[reward]]`` (an array: several rewards combine with weights)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class RewardSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    """Reward plugin (entry point group ``unirl_stream.rewards``)."""
    weight: float = 1.0
    on_nan: Literal["fail", "drop"] = "fail"
    """A NaN/inf/None score stops the run naming the sample (``fail``), or drops the
    sample with the reason in the ledger (``drop``)."""
    options: dict[str, Any] = {}
    """Scorer options, decoded by the scorer's own ``Config`` Struct."""

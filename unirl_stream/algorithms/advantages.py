"""GRPO advantages: rewards z-scored within their prompt group.

A_i = (r_i - mean_g) / std_g, std_g the population std of group g (``adv_std = "group"``) or
one std over all rewards given (``"global"``: the batch, or a running std the caller passes;
UniRL's Wan2.2 recipe uses group means with a batch-wide std). Groups whose rewards are all
equal (std below ``eps``), and groups of one, carry no preference: their advantage is exactly
0, never NaN. Optional clipping to [-clip, clip].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

EPS = 1e-6


def group_advantages(
    rewards: torch.Tensor,
    groups: Sequence[str],
    std_mode: str = "group",
    clip: float | None = None,
    global_std: float | None = None,
    eps: float = EPS,
) -> torch.Tensor:
    """Advantages [B] (fp32) for rewards [B]; ``groups[b]`` is sample b's group id."""
    import torch

    r = rewards.detach().to(torch.float32).flatten()
    if r.numel() != len(groups):
        raise ValueError(f"{r.numel()} rewards but {len(groups)} group ids")
    if not torch.isfinite(r).all():
        raise ValueError(f"non-finite rewards: {r.tolist()}")
    if std_mode not in ("group", "global"):
        raise ValueError(f"adv_std must be 'group' or 'global', got {std_mode!r}")
    index: dict[str, list[int]] = {}
    for b, g in enumerate(groups):
        index.setdefault(g, []).append(b)
    if std_mode == "global":
        gstd = float(r.std(unbiased=False)) if global_std is None else float(global_std)
    adv = torch.zeros_like(r)
    for members in index.values():
        idx = torch.tensor(members)
        rg = r[idx]
        std = float(rg.std(unbiased=False)) if std_mode == "group" else gstd
        if len(members) < 2 or float(rg.max() - rg.min()) <= eps or std <= eps:
            continue  # no preference inside the group: zero advantage
        adv[idx] = (rg - rg.mean()) / std
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return adv

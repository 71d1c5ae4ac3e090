"""The fused adapted linear of ``lora.fuse_adapters``: forward and its autograd Function.

Kept apart from ``lora.py`` because it imports torch at module level: the Function must be a
module-level class for torch.compile (regional compilation traces it inside each block).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def lora_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor,
                b: torch.Tensor, scale: float) -> torch.Tensor:
    """``x W^T + bias + scale * (x A^T) B^T`` with A and B cast to ``x``'s dtype; through
    ``LoraLinear`` when autograd needs gradients (the frozen base gets none)."""
    if torch.is_grad_enabled() and (x.requires_grad or a.requires_grad or b.requires_grad):
        return LoraLinear.apply(x, w, bias, a, b, scale)
    return adapted(x, w, bias, a.to(x.dtype), b.to(x.dtype), scale)[0]


def adapted(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor,
            scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, h): y = x W^T + bias + scale * h B^T with h = x A^T, B's GEMM accumulating into y."""
    y = F.linear(x, w, bias)
    h = F.linear(x, a)
    # view, not reshape: the in-place accumulate must land in y (a fresh, contiguous output)
    y.view(-1, y.shape[-1]).addmm_(h.view(-1, h.shape[-1]), b.t(), alpha=scale)
    return y, h


class LoraLinear(torch.autograd.Function):
    """Adapted linear with a frozen base: gradients for x, A and B only.

    Mixed precision (where we depart from peft's fp32 adapter path): the GEMMs run in the
    activations' dtype with fp32 accumulation, the fp32 master weights cast per call; A's and
    B's gradients come out of the GEMMs in that dtype and accumulate into the fp32 ``.grad``
    (what autocast does). Saved: x and h = x A^T in the activations' dtype (peft saves an
    fp32 copy of x)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor,
                b: torch.Tensor, scale: float) -> torch.Tensor:
        a_, b_ = a.to(x.dtype), b.to(x.dtype)
        y, h = adapted(x, w, bias, a_, b_, scale)
        ctx.save_for_backward(x, w, a_, b_, h)
        ctx.scale = scale
        ctx.master_dtypes = (a.dtype, b.dtype)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w, a_, b_, h = ctx.saved_tensors
        s = ctx.scale
        gy2, x2, h2 = gy.reshape(-1, gy.shape[-1]), x.reshape(-1, x.shape[-1]), h.reshape(-1, h.shape[-1])
        gh = (gy2 @ b_).mul_(s)  # [N, r]
        gx = None
        if ctx.needs_input_grad[0]:
            gx = gy2 @ w
            gx.addmm_(gh, a_)
            gx = gx.view(x.shape)
        ga = (gh.t() @ x2).to(ctx.master_dtypes[0]) if ctx.needs_input_grad[3] else None
        gb = (gy2.t() @ h2).mul_(s).to(ctx.master_dtypes[1]) if ctx.needs_input_grad[4] else None
        return gx, None, None, ga, gb, None

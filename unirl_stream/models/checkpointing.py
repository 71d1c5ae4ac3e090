"""The trainer's activation checkpointing (``model.gradient_checkpointing``, ``model.checkpoint_saves``).

Plain checkpointing (diffusers' ``enable_gradient_checkpointing``) keeps only each block's
input and runs the whole block forward again in the backward. ``attention`` keeps, in
addition, the outputs of the fused attention kernels (torch's selective activation
checkpointing): the backward recomputes the linears, norms and elementwise work but not the
attention, the one op whose recomputation costs the most per byte it would save. At
Wan2.2-A14B's 480x832x33 (14 040 tokens, one H200) self-attention is 4.0 of a block's
12.4 forward TFLOP and 7.6 of its 22.9 ms compiled forward; what it keeps is the output
(14 040 x 5 120 bf16 = 144 MB a block and sample) and the softmax statistics, 5.8 GB for
A14B's 40 blocks per sample in flight. Gradients are the same either way: the saved tensors
are what the recomputation would produce.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

Saves = Literal["attention", "nothing"]


@functools.cache
def attention_ops() -> frozenset[Any]:
    import torch

    aten = torch.ops.aten
    names = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_cudnn_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu")
    return frozenset(getattr(aten, n).default for n in names if hasattr(aten, n))


def _policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op in attention_ops() else CheckpointPolicy.PREFER_RECOMPUTE


def _keep_attention(module: Any, *args: Any) -> Any:
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

    return checkpoint(module.__call__, *args, use_reentrant=False,
                      context_fn=functools.partial(create_selective_checkpoint_contexts, _policy))


def enable(model: Any, saves: Saves) -> None:
    """Checkpoint ``model``'s blocks, keeping what ``saves`` names from the forward."""
    model.enable_gradient_checkpointing(_keep_attention if saves == "attention" else None)

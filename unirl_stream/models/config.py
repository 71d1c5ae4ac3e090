"""Recipe section ``[model]`` and ``[model.lora]``."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta


class LoraConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    rank: Annotated[int, Meta(ge=1)] = 64
    alpha: Annotated[float, Meta(gt=0)] = 128.0
    dropout: Annotated[float, Meta(ge=0, lt=1)] = 0.0
    target_modules: list[str] = msgspec.field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    """Module name suffixes in each transformer (self- and cross-attention projections)."""
    experts: list[Literal["high", "low"]] = msgspec.field(default_factory=lambda: ["high", "low"])
    """Which experts get adapters: ``high`` = ``transformer`` (t >= boundary),
    ``low`` = ``transformer_2``. One-transformer models only have ``high``."""
    producer_dtype: Literal["model", "float32"] = "model"
    """Dtype rollout producers run the adapters in (producers never train; each weight load
    rounds the trainer's fp32 masters into it): ``model`` = ``model.dtype`` (bf16 LoRA GEMMs,
    no fp32 casts of activations), ``float32`` = peft's fp32 adapter path."""
    trainer_dtype: Literal["model", "float32"] = "model"
    """Dtype of the trainer's adapter GEMMs; its masters, gradients and optimizer state stay
    fp32 either way. ``model`` = mixed precision (masters cast per call, activations never
    cast; the producers' numerics when ``producer_dtype`` is ``model`` too), ``float32`` =
    peft's path (every adapted activation cast to fp32). When the two dtypes differ on a bf16
    model, producer and trainer log-probs differ by rounding: use ``decoupled_grpo``."""


class ModelConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str = "wan22"
    """Model plugin (entry point group ``unirl_stream.models``)."""
    path: str
    """Local diffusers folder, hub id (from the local HF cache only), or ``tiny:<layout>``
    for the built-in tiny random-weight model of the real architecture."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"
    """``auto`` = cuda if available else cpu; or an explicit torch device string."""
    boundary_ratio: Annotated[float, Meta(ge=0, le=1)] | None = None
    """Override the two-expert switch point (default: the checkpoint's model_index.json)."""
    max_sequence_length: Annotated[int, Meta(ge=1)] = 512
    compile: Literal["auto", "regional", "full", "off"] = "auto"
    """``regional``: diffusers' ``compile_repeated_blocks(fullgraph=True)``, i.e. one compiled
    transformer block reused by all blocks, for rollout and replay (forward and backward);
    ``full``: ``torch.compile`` of each whole transformer in ``compile_mode`` (minutes of
    autotuning per process); ``auto``: ``regional`` on CUDA, ``off`` on other devices (on CPU
    compiling costs more than it saves)."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = (
        "max-autotune-no-cudagraphs"
    )
    """torch.compile mode of ``compile = "full"`` (regional compilation uses the default mode)."""
    compile_cache: str | None = None
    """Directory of the persistent compile cache (inductor's FX-graph, autograd and autotuning
    caches and the Triton kernels; ``TORCHINDUCTOR_CACHE_DIR``), shared by every process of a
    machine so the compile cost is paid once per machine. Default: torch's own
    (``/tmp/torchinductor_<user>``). Relative paths are relative to the working directory."""
    cuda_graphs: Literal["auto", "on", "off"] = "auto"
    """Rollout producers replay each transformer call as a CUDA graph (models/graphs.py: the
    eager kernels launched as one unit, for launch-bound image models); ``auto``: on CUDA when
    ``compile`` resolves to ``off``. Never on the trainer (autograd)."""
    attention: Literal["native", "cudnn", "cudnn_self"] = "native"
    """Attention kernel of the transformers (models/attention.py): ``native`` = diffusers'
    default (SDPA's choice: cuDNN's fused kernel on an H200 with torch 2.11), ``cudnn`` =
    diffusers' cuDNN backend in every attention layer, ``cudnn_self`` = in the self-attention
    layers only (both CUDA and bf16/fp16 only; diffusers' cuDNN backend copies q, k, v
    contiguous first: measured slower in place at Wan2.2's shapes on an H200)."""
    gradient_checkpointing: bool = False
    checkpoint_saves: Literal["attention", "nothing"] = "attention"
    """With ``gradient_checkpointing``: what the backward's recomputation keeps from the forward
    (models/checkpointing.py). ``attention`` = the fused attention kernels' outputs (the backward
    recomputes everything but the attention; at Wan2.2-A14B's 14 040 tokens 144 MB a block and
    sample), ``nothing`` = plain checkpointing (each block's input only)."""
    lora: LoraConfig = msgspec.field(default_factory=LoraConfig)
    options: dict[str, object] = {}
    """Plugin-specific options, decoded by the plugin's ``Config`` Struct if it has one."""

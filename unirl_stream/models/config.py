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
    no fp32 casts of activations), ``float32`` = the trainer's numerics. With ``model`` on a bf16
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
    compile: bool = False
    """torch.compile the transformer(s) (compile cost is paid once per process; inductor's
    on-disk cache, ``TORCHINDUCTOR_CACHE_DIR``, makes later processes compile faster)."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = (
        "max-autotune-no-cudagraphs"
    )
    """torch.compile mode; the default measured 1.58x on a TI2V-5B step (FACTS.md)."""
    gradient_checkpointing: bool = False
    lora: LoraConfig = msgspec.field(default_factory=LoraConfig)
    options: dict[str, object] = {}
    """Plugin-specific options, decoded by the plugin's ``Config`` Struct if it has one."""

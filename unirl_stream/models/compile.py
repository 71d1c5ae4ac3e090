"""Compiling the Wan2.2 experts: regional (the repeated block) or whole-model.

Regional compilation (diffusers' ``compile_repeated_blocks(fullgraph=True)``) compiles one
``WanTransformerBlock`` graph and reuses it for every block of every expert with the same
shapes: measured on one H200 at TI2V-5B size, 0.71x an eager step with bf16 LoRA after 19.5 s
of compilation, against 314 s for whole-model ``max-autotune`` (FACTS.md). It runs under
gradient checkpointing too (the recomputation calls the compiled block again), so the
trainer's backward is compiled as well.

The compile cost is paid once per machine: inductor's on-disk caches (FX graphs, AOT
autograd, autotuning, Triton kernels) live in ``model.compile_cache`` when the recipe names
one, so a restarted or added producer reuses them; only Dynamo's trace of the block runs again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from unirl_stream.models.config import ModelConfig


def compile_kind(cfg: ModelConfig, device_type: str) -> str:
    """``regional``, ``full`` or ``off`` for this device (``auto``: regional on CUDA only)."""
    if cfg.compile == "auto":
        return "regional" if device_type == "cuda" else "off"
    return cfg.compile


def use_cache_dir(path: str | None) -> None:
    """Point inductor's and Triton's caches at ``path``, before anything compiles (both read
    the variables when they first need a cache)."""
    if path is None:
        return
    root = Path(path).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root)
    os.environ["TRITON_CACHE_DIR"] = str(root / "triton")


def compile_experts(experts: list[Any], cfg: ModelConfig, device_type: str) -> str:
    """Compile each expert in place as the recipe says; returns the kind used."""
    kind = compile_kind(cfg, device_type)
    if kind == "off":
        return kind
    use_cache_dir(cfg.compile_cache)
    for model in experts:
        if kind == "regional":
            model.compile_repeated_blocks(fullgraph=True)
        else:
            model.compile(mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
    return kind

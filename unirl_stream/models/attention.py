"""The attention kernel of the transformers' attention layers (``model.attention``).

Measured on one H200 (``benchmarks/attention_backends.py``, bf16, head dim 128): cuDNN's
fused attention alone against SDPA's default choice (flash) at Wan2.2's 480x832x33
self-attention shapes, forward 1.28x (TI2V-5B, 2 x 3 510 tokens) and 1.60x (A14B, 14 040
tokens) faster, forward + backward 1.67x and 1.64x; at cross-attention shapes (512 keys) the
forward is flash-equal. In place (``gpu_wan22.py``'s attention ablation) it lost: TI2V-5B's
rollout 1.027x plain with cuDNN everywhere, 1.011x with cuDNN in self-attention only, 0.984x
with the default. The reason (``benchmarks/gpu_wan22_block.py``'s profile): with torch 2.11 on
an H200 the default already runs the same cuDNN kernel (what was timed as "flash" above was
flash forced), and diffusers' ``_native_cudnn`` adds contiguous copies of q, k and v before it.
So ``native`` (diffusers' default) is the default; the others stay a choice for GPUs and
torch versions whose default order picks flash.

The backend is set on each attention processor of our transformers, not through diffusers'
``set_attention_backend``, which also switches the process-wide default (any other diffusers
model in the process, a reward model or a plain pipeline, would change kernels with it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

BACKENDS = ("native", "cudnn", "cudnn_self")


def _processors(models: Iterable[Any], self_only: bool = False) -> list[Any]:
    return [m.processor for model in models for m in model.modules()
            if hasattr(getattr(m, "processor", None), "_attention_backend")
            and not (self_only and getattr(m, "is_cross_attention", False))]


def set_backend(models: Iterable[Any], name: str) -> int:
    """Route ``models``' attention processors to backend ``name`` (``cudnn_self``: the
    self-attention layers only, cross-attention on the default); returns how many use cuDNN."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    if name not in BACKENDS:
        raise ValueError(f"attention backend {name!r}: expected one of {BACKENDS}")
    models = list(models)
    for proc in _processors(models):
        proc._attention_backend = None
    if name == "native":
        return 0
    procs = _processors(models, self_only=name == "cudnn_self")
    for proc in procs:
        proc._attention_backend = AttentionBackendName._NATIVE_CUDNN
    return len(procs)


@contextmanager
def stock_attention(models: Iterable[Any]) -> Iterator[None]:
    """``models``' attention through diffusers' default while inside (benchmarks' baselines)."""
    procs = _processors(models)
    saved = [p._attention_backend for p in procs]
    try:
        for p in procs:
            p._attention_backend = None
        yield
    finally:
        for p, b in zip(procs, saved, strict=True):
            p._attention_backend = b

"""One Wan2.2 transformer block at real width, per attention kernel, eager and compiled.

Why: cuDNN's attention kernel alone is 1.3-1.6x faster than flash at Wan's self-attention
shapes (``attention_backends.py``), yet the rollout with it in place was not faster
(``gpu_wan22_attention.py``). This times a one-block ``WanTransformer3DModel`` (random bf16
weights, the published widths, 480x832x33) forward, and forward + backward, per backend
(``native`` = diffusers' default, ``cudnn``) eager and under regional compilation, and lists
each variant's heaviest kernels from torch.profiler, so the attention kernel's time in place
can be read beside its time alone; and forward + backward under plain activation
checkpointing against checkpointing that keeps the attention (``model.checkpoint_saves``).

Compilations (``--compile``): ``eager``; ``regional`` (our default on CUDA); the two
inductor autotuning builds (``max-autotune-no-cudagraphs``: Triton GEMM templates whose
epilogues can take the pointwise work, and coordinate-descent tuning of the rest), of the
repeated blocks (``regional-autotune``) or of the whole model (``full-autotune``).

Usage: python benchmarks/gpu_wan22_block.py [--out DIR] [--layouts ti2v a14b] [--reps N]
           [--compile eager regional ...] [--forward-only]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from attention_backends import timed  # noqa: E402
from gpu_wan22 import LAYOUTS  # noqa: E402
from rows import Rows  # noqa: E402

# (attention kernel, activation checkpointing): forward and forward + backward without
# checkpointing, forward + backward with plain checkpointing and with the attention kept.
VARIANTS = (("native", "off"), ("cudnn", "off"), ("native", "nothing"), ("native", "attention"))
AUTOTUNE = "max-autotune-no-cudagraphs"
COMPILES = ("eager", "regional", "regional-autotune", "full-autotune")
LATENT = {"ti2v": (2, 48, 9, 30, 52), "a14b": (1, 16, 9, 60, 104)}  # the CFG pair / guidance 1


def build(layout: str) -> Any:
    import torch
    from diffusers import WanTransformer3DModel

    cfg = {**LAYOUTS[layout]["transformer"], "num_layers": 1}
    torch.manual_seed(0)
    return WanTransformer3DModel(**cfg).to("cuda", torch.bfloat16)


def inputs(layout: str) -> tuple[Any, Any, Any]:
    import torch

    g = torch.Generator(device="cuda").manual_seed(0)
    shape = LATENT[layout]
    x = torch.randn(*shape, generator=g, device="cuda", dtype=torch.bfloat16)
    t = torch.full((shape[0],), 500.0, device="cuda")
    text = torch.randn(shape[0], 512, 4096, generator=g, device="cuda", dtype=torch.bfloat16)
    return x, t, text


def top_kernels(fn: Any, calls: int) -> list[tuple[float, str]]:
    """The six kernels with the most device time, in ms per call."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    per = [(float(getattr(a, "self_device_time_total", 0.0)) / 1e3 / calls, a.key) for a in prof.key_averages()]
    return sorted((p for p in per if p[0] > 0), reverse=True)[:6]


def compile_model(model: Any, tag: str) -> None:
    if tag == "regional":
        model.compile_repeated_blocks(fullgraph=True)
    elif tag == "regional-autotune":
        model.compile_repeated_blocks(fullgraph=True, mode=AUTOTUNE)
    elif tag == "full-autotune":
        model.compile(mode=AUTOTUNE)


def measure(rows: Rows, layout: str, model: Any, variant: tuple[str, str], tag: str, reps: int,
            forward_only: bool) -> None:
    import torch

    attention, ckpt = variant
    x, t, text = inputs(layout)
    xg = x.clone().requires_grad_(True)

    def fwd() -> Any:
        with torch.no_grad():
            return model(x, t, text, return_dict=False)[0]

    def fwd_bwd() -> Any:
        out = model(xg, t, text, return_dict=False)[0]
        out.float().square().mean().backward()

    cfg = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "layout": layout,
           "blocks": 1, "attention": attention, "compile": tag, "checkpointing": ckpt}
    calls = (("fwd", fwd), ("fwd_bwd", fwd_bwd)) if ckpt == "off" else (("fwd_bwd", fwd_bwd),)
    for name, fn in calls[:1] if forward_only else calls:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        # a compiled build's first variant: its compilation (later variants: recompiles, if any)
        rows.add(cfg, f"block_{name}_first_call_s", time.perf_counter() - t0, "s")
        s = timed(fn, reps)
        top = [(round(ms, 3), k[:80]) for ms, k in top_kernels(fn, 3)]
        rows.add({**cfg, "top_kernels_ms": top}, f"block_{name}_s", s, "s")
        print(f"[{layout} {tag} {attention} ckpt {ckpt}] {name} {s * 1e3:.2f} ms", flush=True)
        for ms, k in top:
            print(f"    {ms:8.3f} ms  {k}", flush=True)


def main() -> None:
    import torch

    from unirl_stream.models import checkpointing
    from unirl_stream.models.attention import set_backend

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--layouts", nargs="*", default=["a14b", "ti2v"], choices=sorted(LATENT))
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--compile", nargs="*", default=["eager", "regional"], choices=COMPILES)
    ap.add_argument("--variants", nargs="*", type=int, default=list(range(len(VARIANTS))),
                    help=f"indices into {VARIANTS}")
    ap.add_argument("--forward-only", action="store_true", help="the rollout's call only")
    a = ap.parse_args()
    rows = Rows("gpu_wan22_block", Path(a.out) / "gpu_wan22_block.jsonl")
    torch.backends.cuda.matmul.allow_tf32 = True
    for layout in a.layouts:
        for tag in a.compile:
            torch._dynamo.reset()
            model = build(layout)
            compile_model(model, tag)
            for variant in (VARIANTS[i] for i in a.variants):
                set_backend([model], variant[0])
                model.disable_gradient_checkpointing()
                if variant[1] != "off":
                    checkpointing.enable(model, variant[1])
                measure(rows, layout, model, variant, tag, a.reps, a.forward_only)
            del model
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""Self-attention of the two Wan2.2 layouts on one GPU, per SDPA backend: what the kernel costs.

Shapes (bf16, head dim 128, 480x832x33):
  ti2v  TI2V-5B: 2 sequences (the CFG pair) of 3 510 tokens, 24 heads
  a14b  T2V-A14B: 1 sequence (guidance 1) of 14 040 tokens, 40 heads
  *_x   their cross-attention: the same queries against 512 text tokens

Backends: flash (what plain diffusers gets from SDPA's default order), cudnn, cudnn_strided (cuDNN
on the permuted views, not made contiguous), efficient.
Forward, and forward + backward (the replay's, gradients into q, k, v), in diffusers' layout
[B, S, H, D] permuted to [B, H, S, D] as its native processor does (cudnn: made contiguous, as
diffusers' ``_native_cudnn`` does). TFLOP/s counts 4 S L H D per sequence forward (L keys),
2.5x that forward + backward.

Usage: python benchmarks/attention_backends.py [--out DIR] [--reps N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from rows import Rows  # noqa: E402

SHAPES = {"ti2v": (2, 3510, 24, 3510), "a14b": (1, 14040, 40, 14040),
          "ti2v_x": (2, 3510, 24, 512), "a14b_x": (1, 14040, 40, 512)}
BACKENDS = ("flash", "cudnn", "cudnn_strided", "efficient")


def timed(fn: Any, reps: int) -> float:
    import torch

    for _ in range(2):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def attention(backend: str, q: Any, k: Any, v: Any) -> Any:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kind = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "cudnn_strided": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}[backend]
    q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
    if backend == "cudnn":
        q, k, v = (t.contiguous() for t in (q, k, v))
    with sdpa_kernel(kind):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).permute(0, 2, 1, 3)


def measure(backend: str, qkv: tuple[Any, Any, Any], gy: Any, ref: Any, reps: int) -> tuple[float, float, float]:
    """(max |out - flash|, forward s, forward + backward s) of one backend."""
    import torch

    with torch.no_grad():
        err = float((attention(backend, *qkv).float() - ref).abs().max())
        t_f = timed(lambda: attention(backend, *qkv), reps)
    t_fb = timed(lambda: torch.autograd.grad(attention(backend, *qkv), qkv, gy), reps)
    return err, t_f, t_fb


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    rows = Rows("attention_backends", Path(a.out) / "attention_backends.jsonl")
    base = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "head_dim": 128, "dtype": "bfloat16"}
    for layout, (b, s, h, keys) in SHAPES.items():
        g = torch.Generator(device="cuda").manual_seed(0)
        qkv = tuple(torch.randn(b, n, h, 128, generator=g, device="cuda", dtype=torch.bfloat16).requires_grad_(True)
                    for n in (s, keys, keys))
        gy = torch.randn(b, s, h, 128, generator=g, device="cuda", dtype=torch.bfloat16)
        flops = 4 * b * s * keys * h * 128
        ref = attention("flash", *qkv).detach().float()
        for backend in BACKENDS:
            cfg = {**base, "layout": layout, "batch": b, "tokens": s, "keys": keys, "heads": h, "backend": backend}
            try:
                err, t_f, t_fb = measure(backend, qkv, gy, ref, a.reps)
            except RuntimeError as e:  # a backend that refuses these shapes
                rows.add({**cfg, "error": str(e)[:200]}, "unsupported", 1.0, "flag")
                print(f"[{layout}] {backend}: unsupported ({str(e)[:80]})", flush=True)
                continue
            rows.add(cfg, "fwd_s", t_f, "s")
            rows.add(cfg, "fwd_tflops", flops / t_f / 1e12, "TFLOP/s")
            rows.add(cfg, "fwd_bwd_s", t_fb, "s")
            rows.add(cfg, "fwd_bwd_tflops", 2.5 * flops / t_fb / 1e12, "TFLOP/s")
            rows.add(cfg, "max_abs_diff_vs_flash", err, "abs")
            print(f"[{layout}] {backend}: fwd {t_f * 1e3:.2f} ms ({flops / t_f / 1e12:.0f} TFLOP/s), fwd+bwd "
                  f"{t_fb * 1e3:.2f} ms ({2.5 * flops / t_fb / 1e12:.0f} TFLOP/s), |diff| {err:.1e}", flush=True)


if __name__ == "__main__":
    main()

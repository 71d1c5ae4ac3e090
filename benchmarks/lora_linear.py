"""One adapted linear at SD3.5-Medium's real shapes on one GPU: what the adapter costs.

SD3.5-M's joint blocks project 1 024 image tokens (to_q/k/v/out.0) and 333 text tokens
(add_*_proj) per sequence at width 1 536; a CFG batch of B samples is 2B sequences. bf16, r32.
Each variant is timed as a CUDA graph of ``--inner`` calls (no launch overhead: the device's
own cost, which is what remains once the producer's calls are graphed):

  base      F.linear(x, W)                            (the adapter's floor: merged weights)
  peft      peft's lora.Linear.forward                (GEMM A, GEMM B, * scale, + result)
  fused     lora.fuse_adapters's forward         (GEMM A, GEMM B accumulating into y)

Usage: python benchmarks/lora_linear.py [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from rows import Rows  # noqa: E402


def graph_time(fn: Any, inner: int, repeats: int = 5) -> float:
    """Median seconds per call of ``fn`` replayed ``inner`` times inside one CUDA graph."""
    import statistics

    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(inner):
            fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / inner)
    return statistics.median(times)


def measure(batch: int, tokens: int, inner: int) -> tuple[float, float, float]:
    """(base, peft, fused) seconds per call of one r32 adapted 1536 -> 1536 linear in bf16."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    from unirl_stream.models.lora import fuse_adapters

    model = torch.nn.Sequential(torch.nn.Linear(1536, 1536)).to("cuda", torch.bfloat16)
    model = inject_adapter_in_model(LoraConfig(r=32, lora_alpha=64, target_modules=["0"]), model)
    model.to(torch.bfloat16).eval()
    layer = model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.01)  # a live adapter: B != 0
        x = torch.randn(2 * batch, tokens, 1536, device="cuda", dtype=torch.bfloat16)
        t_base = graph_time(lambda: layer.base_layer(x), inner)
        t_peft = graph_time(lambda: layer(x), inner)
        assert fuse_adapters(model) == 1
        t_fused = graph_time(lambda: layer(x), inner)
    return t_base, t_peft, t_fused


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--inner", type=int, default=50)
    a = ap.parse_args()
    rows = Rows("lora_linear", Path(a.out) / "lora_linear.jsonl")
    for batch in (1, 4, 8):
        for tokens, what in ((1024, "image"), (333, "text")):
            t_base, t_peft, t_fused = measure(batch, tokens, a.inner)
            cfg = {"gpu": torch.cuda.get_device_name(0), "batch": batch, "tokens": 2 * batch * tokens,
                   "width": 1536, "rank": 32, "dtype": "bfloat16", "tokens_of": what}
            for name, t in (("base", t_base), ("peft", t_peft), ("fused", t_fused)):
                rows.add(cfg, f"{name}_us", t * 1e6, "us")
            rows.add(cfg, "peft_over_base", t_peft / t_base, "x")
            rows.add(cfg, "fused_over_base", t_fused / t_base, "x")
            print(f"batch {batch} {what} ({2 * batch * tokens} tokens): base {t_base * 1e6:.1f}us, "
                  f"peft {t_peft * 1e6:.1f}us ({t_peft / t_base:.2f}x), fused {t_fused * 1e6:.1f}us "
                  f"({t_fused / t_base:.2f}x)", flush=True)


if __name__ == "__main__":
    main()

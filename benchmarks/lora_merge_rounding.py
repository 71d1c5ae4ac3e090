"""Does a LoRA update survive in bf16? Merged into the bf16 base weights, or kept as bf16 adapters.

Real shapes on CPU (arithmetic, not timing, so no GPU is needed): one transformer block of each
Wan2.2 layout at full width (TI2V-5B 3072 / ffn 14336, T2V-A14B 5120 / ffn 13824) in bf16 with
diffusers' own initialisation (random weights: no checkpoint can be downloaded here), an r64 /
alpha 128 adapter on q, k, v, out of both attentions. B is set to +-b for b = 3e-4 (one AdamW
step at lr 3e-4 from B = 0), 3e-3 (about ten), 3e-2 (about a hundred).

  merged    ||bf16(W + dW) - W - dW|| / ||dW||  (1.0 = the update is lost), and the share of
            the weight entries that the merge leaves unchanged
  adapters  ||y_bf16 - y_fp32|| / ||y_fp32|| of the adapter's output on unit-normal inputs (what
            a producer with bf16 adapters computes instead of the trainer's fp32 adapters)

Usage: python benchmarks/lora_merge_rounding.py [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from rows import Rows  # noqa: E402

WIDTHS = {"TI2V-5B": (24, 14336), "T2V-A14B": (40, 13824)}
STEPS = (3e-4, 3e-3, 3e-2)


def one_block(heads: int, ffn: int) -> Any:
    import torch
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig

    torch.manual_seed(0)
    model = WanTransformer3DModel(num_attention_heads=heads, attention_head_dim=128, in_channels=16,
                                  out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=ffn, num_layers=1,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads")
    model = model.to(torch.bfloat16)
    model.add_adapter(LoraConfig(r=64, lora_alpha=128.0, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    return model


def measure(model: Any, b: float) -> dict[str, float]:
    import torch

    merged_err, unchanged, adapter_err = [], [], []
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in [m for m in model.blocks[0].modules() if hasattr(m, "lora_A") and "default" in m.lora_A]:
            w = m.base_layer.weight
            a = m.lora_A["default"].weight.float()
            sign = torch.randint(0, 2, m.lora_B["default"].weight.shape, generator=g).float() * 2 - 1
            bb = sign * b
            dw = m.scaling["default"] * (bb @ a)
            merged = (w.float() + dw).to(torch.bfloat16)
            merged_err.append(float((merged.float() - w.float() - dw).norm() / dw.norm()))
            unchanged.append(float((merged == w).float().mean()))
            x = torch.randn(256, a.shape[1], generator=g)
            y32 = m.scaling["default"] * (x @ a.T) @ bb.T
            xb, ab, bbb = x.bfloat16(), a.bfloat16(), bb.bfloat16()
            y16 = (m.scaling["default"] * (xb @ ab.T) @ bbb.T).float()
            adapter_err.append(float((y16 - y32).norm() / y32.norm()))
    n = len(merged_err)
    return {"merged_relative_error": sum(merged_err) / n, "merged_unchanged_fraction": sum(unchanged) / n,
            "bf16_adapter_relative_error": sum(adapter_err) / n, "modules": n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    rows = Rows("lora_merge_rounding", Path(a.out) / "lora_merge_rounding.jsonl")
    for name, (heads, ffn) in WIDTHS.items():
        model = one_block(heads, ffn)
        for b in STEPS:
            r = measure(model, b)
            cfg = {"model": name, "width": heads * 128, "rank": 64, "alpha": 128.0, "lora_b": b,
                   "modules": r.pop("modules"), "weights": "diffusers init, bf16"}
            for metric, v in r.items():
                rows.add(cfg, metric, v, "ratio")
            print(f"{name} B=+-{b:g}: merged error {r['merged_relative_error']:.3f} "
                  f"(unchanged entries {r['merged_unchanged_fraction']:.3f}), bf16 adapter error "
                  f"{r['bf16_adapter_relative_error']:.4f}", flush=True)
        del model
    print("merge keeps the update only where merged_relative_error << 1; bf16 adapters keep it at every step size")


if __name__ == "__main__":
    main()

"""Real-size Wan2.2 on one GPU, both layouts: plain diffusers vs our producer and trainer.

Layouts (random weights from the published configs, bf16, saved in the diffusers layout and
loaded back through the real loader):

  ti2v  TI2V-5B: one transformer, 30 blocks, 24 x 128 heads, ffn 14336, 48 latent channels,
        the residual z_dim-48 VAE; 480x832x33 (3 510 tokens), 20 steps, CFG 5.
  a14b  T2V-A14B: two experts of 40 x 128 heads, ffn 13824, 16 latent channels, the z_dim-16
        VAE, boundary 0.875; 480x832x33 (14 040 tokens), 20 steps, guidance 1 (the
        wan22_dancegrpo recipe). Reduced depth: each expert has ``--a14b-blocks`` of its 40
        blocks (same width); transformer-bound costs are also reported scaled by 40 / blocks
        (the embeddings and head outside the blocks are <1% of a step at this size).

The UMT5-XXL text encoder is a 2-layer UMT5 of the same width (prompts are encoded once and
cached, so it is in no timing). LoRA r64 / alpha 128 on q, k, v, out of both attentions; SDE
steps in timestep fraction [0, 0.6) (12 of 20). Phases (``gpu_wan22_phases.py``) write JSONL
rows as soon as measured: matmul roof, plain ``WanPipeline``, our producer (bf16 adapters)
and trainer (fp32 adapters) eager, the producer/trainer log-prob gap, decode, reward, a bare forward+backward with checkpointing, replay (grpo, and decoupled with its
proximal pass), regional compilation of producer and trainer, and a second process starting
on the warm compile cache, the attention-kernel ablation (``gpu_wan22_attention.py``).
Per-sample stage costs for the planner go to ``wan22_stage_costs.jsonl``.

Usage: python benchmarks/gpu_wan22.py [--layouts ti2v a14b] [--out DIR] [--skip PHASE ...]
       python benchmarks/gpu_wan22.py --tiny     (CPU dry run of every code path)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from rows import Rows  # noqa: E402

TEXT = {"d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 2, "num_heads": 64,
        "feed_forward_proj": "gated-gelu", "pad_token_id": 0, "eos_token_id": 1,
        "decoder_start_token_id": 0}
_COMMON_T = {"patch_size": [1, 2, 2], "attention_head_dim": 128, "text_dim": 4096, "freq_dim": 256,
             "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024}
LAYOUTS: dict[str, dict[str, Any]] = {
    "ti2v": {
        "name": "TI2V-5B",
        "transformer": {**_COMMON_T, "num_attention_heads": 24, "in_channels": 48, "out_channels": 48,
                        "ffn_dim": 14336, "num_layers": 30},
        "full_blocks": 30, "experts": 1, "boundary_ratio": None, "expand_timesteps": True,
        "vae": {"base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "dim_mult": [1, 2, 4, 4],
                "num_res_blocks": 2, "attn_scales": [], "temperal_downsample": [False, True, True],
                "is_residual": True, "in_channels": 12, "out_channels": 12, "patch_size": 2,
                "scale_factor_spatial": 16, "scale_factor_temporal": 4,
                "latents_mean": [0.0] * 48, "latents_std": [1.0] * 48},
        "guidance": 5.0, "lora_experts": ["high"],
    },
    "a14b": {
        "name": "T2V-A14B",
        "transformer": {**_COMMON_T, "num_attention_heads": 40, "in_channels": 16, "out_channels": 16,
                        "ffn_dim": 13824, "num_layers": 40},
        "full_blocks": 40, "experts": 2, "boundary_ratio": 0.875, "expand_timesteps": False,
        "vae": {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
                "temperal_downsample": [False, True, True], "latents_mean": [0.0] * 16, "latents_std": [1.0] * 16},
        "guidance": 1.0, "lora_experts": ["high", "low"],
    },
}
TINY = {"transformer": {"num_attention_heads": 2, "attention_head_dim": 12, "ffn_dim": 48, "num_layers": 2,
                        "text_dim": 32, "freq_dim": 32, "rope_max_seq_len": 64},
        "vae": {"base_dim": 8, "decoder_base_dim": 12, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1},
        "text": {"d_model": 32, "d_kv": 8, "d_ff": 48, "num_heads": 4}}


def layout_config(name: str, a: argparse.Namespace) -> dict[str, Any]:
    lay = {**LAYOUTS[name]}
    t = {**lay["transformer"]}
    if name == "a14b":
        t["num_layers"] = a.a14b_blocks
    if a.tiny:
        t.update(TINY["transformer"])
        lay["vae"] = {**lay["vae"], **TINY["vae"]}
        if "decoder_base_dim" not in LAYOUTS[name]["vae"]:
            lay["vae"].pop("decoder_base_dim")
    lay["transformer"] = t
    lay["blocks"] = t["num_layers"]
    lay["full_blocks"] = t["num_layers"] if a.tiny else lay["full_blocks"]
    return lay


def build_model(out: Path, lay: dict[str, Any], tiny: bool, device: str) -> Path:
    """Random-weight pipeline of ``lay`` saved as a diffusers folder."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    from unirl_stream.models.tiny import VOCAB, build_tokenizer

    xcfg = {**TEXT, **(TINY["text"] if tiny else {}), "vocab_size": len(VOCAB)}
    dtype = torch.float32 if tiny else torch.bfloat16
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU: minutes faster than 5B params on CPU
        experts = [WanTransformer3DModel(**lay["transformer"]).to(dtype) for _ in range(lay["experts"])]
        vae = AutoencoderKLWan(**lay["vae"]).to(dtype)
        text = UMT5EncoderModel(UMT5Config(**xcfg)).to(dtype)
    extra = {"transformer_2": experts[1], "boundary_ratio": lay["boundary_ratio"]} if len(experts) > 1 else {}
    pipe = WanPipeline(tokenizer=build_tokenizer(), text_encoder=text, vae=vae, transformer=experts[0],
                       scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction",
                                                         use_flow_sigmas=True, flow_shift=5.0),
                       expand_timesteps=lay["expand_timesteps"], **extra)
    pipe.save_pretrained(str(out), safe_serialization=True)
    del pipe, experts, vae, text
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def make_recipe(model_dir: Path, tmp: Path, a: argparse.Namespace, lay: dict[str, Any], **model: Any) -> Any:
    from unirl_stream.recipe import decode

    prompts = tmp / "prompts.txt"
    prompts.write_text("a red fox running through snow\na city street at night in the rain\n")
    return decode({
        "run": {"name": "gpu", "seed": 0, "total_steps": 1, "output_dir": str(tmp)},
        "model": {"name": "wan22", "path": str(model_dir), "dtype": "float32" if a.tiny else "bfloat16",
                  "device": a.device, "gradient_checkpointing": True, "compile": "off",
                  "compile_cache": str(a.cache), "lora": {"rank": 64, "alpha": 128.0,
                                                          "experts": lay["lora_experts"]}, **model},
        "data": {"prompts": str(prompts), "shuffle": False},
        "sampling": {"height": a.height, "width": a.width, "num_frames": a.frames,
                     "num_inference_steps": a.steps, "guidance_scale": lay["guidance"], "shift": 5.0,
                     "samples_per_prompt": 2, "sde": {"kernel": "flow_sde", "fraction": [0.0, 0.6]}},
        "algorithm": {"name": "decoupled_grpo", "updates_per_batch": 1, "micro_batch": 1, "lr": 1e-5},
        "reward": [{"name": "brightness"}],
        "pipeline": {"backend": "local", "max_staleness": 1, "groups_per_step": 1, "rollout_batch": 1},
        "logging": {"live": False},
    }, "gpu-benchmark")


class Clock:
    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn: Any) -> tuple[float, Any]:
        import torch

        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, out

    def peak_gib(self) -> float:
        import torch

        return torch.cuda.max_memory_allocated() / 2**30 if self.cuda else 0.0


def warm_start_child(a: Any, model_dir: Path, clock: Any) -> None:
    """The second process of the warm-cache measurement: load a compiled producer, time its
    first step (the compile cache holds what the first process compiled)."""
    from gpu_wan22_phases import first_step

    from unirl_stream.models.wan22 import Wan22Policy

    t_proc = time.time()
    lay = layout_config(a.layout, a)
    a.cache = Path(a.cache)
    recipe = make_recipe(model_dir, model_dir.parent, a, lay, compile="regional")
    t_load, policy = clock(lambda: Wan22Policy.from_recipe(recipe, role="producer"))
    t_first, _ = clock(lambda: first_step(policy))
    t_second, _ = clock(lambda: first_step(policy))
    rows = Rows("gpu_wan22", Path(a.out) / ("gpu_wan22_tiny.jsonl" if a.tiny else "gpu_wan22.jsonl"))
    c = {"layout": a.layout, "compile": "regional", "cache": "warm", "geometry": f"{a.height}x{a.width}x{a.frames}"}
    rows.add(c, "warm_load_s", t_load, "s")
    rows.add(c, "warm_first_step_s", t_first, "s")
    rows.add(c, "warm_steady_step_s", t_second, "s")
    rows.add(c, "warm_process_to_first_step_s", time.time() - t_proc, "s")
    from torch._dynamo.utils import counters

    hits = dict(counters["inductor"])
    rows.add({**c, "inductor_counters": {k: v for k, v in hits.items() if "cache" in k}},
             "warm_fxgraph_cache_hits", float(hits.get("fxgraph_cache_hit", 0)), "count")
    print(f"[{a.layout}] warm cache: load {t_load:.1f}s, first step {t_first:.2f}s (steady {t_second:.3f}s)",
          flush=True)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tiny", action="store_true", help="CPU dry run with tiny models")
    ap.add_argument("--layouts", nargs="*", default=["ti2v", "a14b"], choices=sorted(LAYOUTS))
    ap.add_argument("--a14b-blocks", type=int, default=4, help="blocks per A14B expert (of 40)")
    ap.add_argument("--skip", nargs="*", default=[], help="phases to skip: compile, warm, reward, attention")
    ap.add_argument("--profile", default=None, choices=sorted(LAYOUTS), help="profile replay vs pair in this layout")
    ap.add_argument("--cache", default=None, help="compile cache directory (default: a temporary one)")
    ap.add_argument("--warm-start", default=None, help=argparse.SUPPRESS)  # child process: model dir
    ap.add_argument("--layout", default="ti2v", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.device = "cpu" if a.tiny else "cuda"
    a.clip_range = 1e-4  # the published recipe's, what the log-prob gaps are compared with
    a.height, a.width, a.frames, a.steps = (64, 64, 5, 20) if a.tiny else (480, 832, 33, 20)
    return a


def main() -> None:
    import tempfile

    import gpu_wan22_phases as ph
    import torch

    a = parse()
    clock = Clock(a.device)
    if a.warm_start:  # the second process of the warm-cache measurement
        warm_start_child(a, Path(a.warm_start), clock)
        return
    suffix = "_tiny" if a.tiny else ""
    rows = Rows("gpu_wan22", Path(a.out) / f"gpu_wan22{suffix}.jsonl")
    costs = Rows("wan22_stage_costs", Path(a.out) / f"wan22_stage_costs{suffix}.jsonl")
    base = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "geometry": f"{a.height}x{a.width}x{a.frames}", "steps": a.steps}
    roof = ph.matmul_roof(rows, base, clock, a.tiny)
    with tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        a.cache = Path(a.cache) if a.cache else tmp / "compile_cache"
        for name in a.layouts:
            lay = layout_config(name, a)
            cfg = {**base, "model": lay["name"] + (" (tiny dry run)" if a.tiny else " random weights, bf16"),
                   "layout": name, "blocks": lay["blocks"], "full_blocks": lay["full_blocks"],
                   "guidance": lay["guidance"]}
            t_build, model_dir = clock(lambda n=name, lo=lay: build_model(tmp / n, lo, a.tiny, a.device))
            rows.add(cfg, "build_and_save_s", t_build, "s")
            ph.run_layout(ph.Ctx(a, lay, cfg, rows, costs, clock, roof, model_dir, tmp, make_recipe))
            if clock.cuda:
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""Real-size Wan2.2-TI2V-5B on one GPU: plain diffusers vs our SDE sampler, replay, compile.

Random weights built from the published TI2V-5B configs (30 layers, 24 x 128 heads, ffn 14336,
48 latent channels, the residual z_dim-48 VAE), bf16, saved in the diffusers layout and loaded
back through the real loader. The UMT5-XXL text encoder is replaced by a 2-layer UMT5 of the
same width (text_dim 4096): prompts are encoded once per prompt and cached, so it does not
enter the timings. Phases, each writing JSONL rows as soon as measured:

  plain     WanPipeline.__call__ (output_type="latent"), adapters disabled
  sampler   our SDE sampler with per-step log-probs (Wan22Policy.rollout without decode)
  decode    the VAE decode of one video
  replay    one LoRA update on one sample over its SDE steps (proximal pass + update)
  compile   the sampler with model.compile (compile time, then steady time)
  async     a short pipeline run, producer and trainer sharing the GPU (backend local)

Usage: python benchmarks/gpu_wan22.py [--out DIR] [--deadline-s 560] [--skip PHASE ...]
       python benchmarks/gpu_wan22.py --tiny     (CPU dry run of every code path)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from rows import Rows  # noqa: E402

TI2V_TRANSFORMER = {"patch_size": [1, 2, 2], "num_attention_heads": 24, "attention_head_dim": 128,
                    "in_channels": 48, "out_channels": 48, "text_dim": 4096, "freq_dim": 256,
                    "ffn_dim": 14336, "num_layers": 30, "cross_attn_norm": True,
                    "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024}
TI2V_VAE = {"base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "dim_mult": [1, 2, 4, 4],
            "num_res_blocks": 2, "attn_scales": [], "temperal_downsample": [False, True, True],
            "is_residual": True, "in_channels": 12, "out_channels": 12, "patch_size": 2,
            "scale_factor_spatial": 16, "scale_factor_temporal": 4,
            "latents_mean": [0.0] * 48, "latents_std": [1.0] * 48}
TEXT = {"d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 2, "num_heads": 64,
        "feed_forward_proj": "gated-gelu", "pad_token_id": 0, "eos_token_id": 1,
        "decoder_start_token_id": 0}
TINY_SHRINK = {"transformer": {"num_attention_heads": 2, "attention_head_dim": 12, "ffn_dim": 48,
                               "num_layers": 2, "text_dim": 32, "freq_dim": 32, "rope_max_seq_len": 64},
               "vae": {"base_dim": 8, "decoder_base_dim": 12, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1},
               "text": {"d_model": 32, "d_kv": 8, "d_ff": 48, "num_heads": 4}}


def build_model(out: Path, tiny: bool, device: str) -> Path:
    """Random-weight TI2V-5B (or its tiny twin) saved as a diffusers folder."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from unirl_stream.models.tiny import VOCAB, build_tokenizer

    tcfg = {**TI2V_TRANSFORMER, **(TINY_SHRINK["transformer"] if tiny else {})}
    vcfg = {**TI2V_VAE, **(TINY_SHRINK["vae"] if tiny else {})}
    xcfg = {**TEXT, **(TINY_SHRINK["text"] if tiny else {}), "vocab_size": len(VOCAB)}
    dtype = torch.float32 if tiny else torch.bfloat16
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU: minutes faster than 5B params on CPU
        transformer = WanTransformer3DModel(**tcfg).to(dtype)
        vae = AutoencoderKLWan(**vcfg).to(dtype)
        text = UMT5EncoderModel(UMT5Config(**xcfg)).to(dtype)
    pipe = WanPipeline(tokenizer=build_tokenizer(), text_encoder=text, vae=vae, transformer=transformer,
                       scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction",
                                                         use_flow_sigmas=True, flow_shift=5.0),
                       expand_timesteps=True)
    pipe.save_pretrained(str(out), safe_serialization=True)
    del pipe, transformer, vae, text
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def make_recipe(model_dir: Path, tmp: Path, a: argparse.Namespace, **model: Any) -> Any:
    from unirl_stream.recipe import decode

    prompts = tmp / "prompts.txt"
    prompts.write_text("a red fox running through snow\na city street at night in the rain\n")
    return decode({
        "run": {"name": "gpu", "seed": 0, "total_steps": 1, "output_dir": str(tmp)},
        "model": {"name": "wan22", "path": str(model_dir), "dtype": "float32" if a.tiny else "bfloat16",
                  "device": a.device, "gradient_checkpointing": not a.tiny,
                  "lora": {"rank": 64, "alpha": 128.0, "experts": ["high"]}, **model},
        "data": {"prompts": str(prompts), "shuffle": False},
        "sampling": {"height": a.height, "width": a.width, "num_frames": a.frames,
                     "num_inference_steps": a.steps, "guidance_scale": a.guidance, "shift": 5.0,
                     "samples_per_prompt": 2, "sde": {"kernel": "flow_sde", "fraction": [0.0, 0.6]}},
        "algorithm": {"updates_per_batch": 1, "micro_batch": 1, "lr": 1e-5},
        "reward": [{"name": "brightness"}],
        "pipeline": {"backend": "local", "max_staleness": 1, "groups_per_step": 1, "rollout_batch": 2},
        "logging": {"live": False},
    }, "gpu-benchmark")


class Clock:
    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def __call__(self, fn: Any) -> tuple[float, Any]:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    def peak_gib(self) -> float:
        import torch

        return torch.cuda.max_memory_allocated() / 2**30 if self.cuda else 0.0


def phase_eager(policy: Any, a: argparse.Namespace, rows: Rows, cfg: dict, clock: Clock) -> dict[str, float]:
    import torch

    from unirl_stream.algorithms.losses import GRPO
    from unirl_stream.algorithms.train import make_optimizer, train_on_batch
    from unirl_stream.api import Prompt

    prompt = Prompt(id="p:0", text="a red fox running through snow")
    pipe = policy.pipeline
    gen = torch.Generator("cpu").manual_seed(0)

    def plain() -> Any:
        with policy._adapters_disabled():
            return pipe(prompt=prompt.text, negative_prompt="", height=a.height, width=a.width,
                        num_frames=a.frames, num_inference_steps=a.steps, guidance_scale=a.guidance,
                        output_type="latent", generator=gen).frames

    clock(plain)  # warm-up (kernels, allocator)
    t_plain, latents = clock(plain)
    rows.add(cfg, "plain_pipeline_s", t_plain, "s")
    rows.add(cfg, "plain_pipeline_peak", clock.peak_gib(), "GiB")
    kept: list[Any] = []
    real_decode = policy.decode
    policy.decode = lambda lat: (kept.append(lat), torch.zeros(lat.shape[0], 1, 1, 1, 3, dtype=torch.uint8))[1]
    clock(lambda: policy.rollout([prompt], [1]))
    t_ours, _ = clock(lambda: policy.rollout([prompt], [2]))
    rows.add(cfg, "sampler_s", t_ours, "s")
    rows.add(cfg, "sampler_peak", clock.peak_gib(), "GiB")
    rows.add(cfg, "sampler_over_plain", t_ours / t_plain, "ratio")
    # where the overhead goes: without adapters (the bare sampler), and fp32 GEMMs without TF32
    with policy._adapters_disabled():
        t_bare, _ = clock(lambda: policy.rollout([prompt], [2]))
    rows.add(cfg, "sampler_no_lora_over_plain", t_bare / t_plain, "ratio")
    if clock.cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        t_notf32, _ = clock(lambda: policy.rollout([prompt], [2]))
        torch.backends.cuda.matmul.allow_tf32 = policy.options.tf32
        rows.add(cfg, "sampler_lora_fp32_no_tf32_over_plain", t_notf32 / t_plain, "ratio")
        print(f"sampler without LoRA {t_bare / t_plain:.3f}x plain, LoRA without TF32 {t_notf32 / t_plain:.3f}x",
              flush=True)
    policy.decode = real_decode
    t_dec, _ = clock(lambda: policy.decode(kept[-1]))
    rows.add(cfg, "vae_decode_s", t_dec, "s")
    rows.add(cfg, "vae_decode_peak", clock.peak_gib(), "GiB")
    td = policy.rollout([prompt], [3])
    td["advantage"] = torch.ones(1)
    alg = policy.recipe.algorithm
    opt = make_optimizer(policy, alg)
    step = lambda: train_on_batch(policy, GRPO(alg), opt, [prompt], td, alg, bump_version=False)  # noqa: E731
    clock(step)
    t_replay, _ = clock(step)
    k = int(td["sde_steps"].shape[1])
    rows.add({**cfg, "sde_steps": k}, "replay_update_per_sample_s", t_replay, "s")
    rows.add({**cfg, "sde_steps": k}, "replay_peak", clock.peak_gib(), "GiB")
    rows.add({**cfg, "sde_steps": k}, "replay_over_rollout", t_replay / (t_ours + t_dec), "ratio")
    print(f"plain {t_plain:.2f}s  sampler {t_ours:.2f}s ({t_ours / t_plain:.3f}x)  decode {t_dec:.2f}s  "
          f"replay {t_replay:.2f}s over {k} steps", flush=True)
    return {"plain": t_plain, "sampler": t_ours}


def phase_compile(policy: Any, a: argparse.Namespace, rows: Rows, cfg: dict, clock: Clock,
                  plain: float) -> None:
    """Compile the already-loaded transformer in place (what ``model.compile = true`` does at
    load time) and time the sampler again; the first call pays the compilation."""
    import torch

    from unirl_stream.api import Prompt

    for m in policy.experts:
        m.compile(mode=None if a.compile_mode == "default" else a.compile_mode)
    policy.decode = lambda lat: torch.zeros(lat.shape[0], 1, 1, 1, 3, dtype=torch.uint8)
    prompt = Prompt(id="p:0", text="a red fox running through snow")
    t_first, _ = clock(lambda: policy.rollout([prompt], [1]))
    t_steady, _ = clock(lambda: policy.rollout([prompt], [2]))
    c = {**cfg, "compile_mode": a.compile_mode}
    rows.add(c, "compile_first_rollout_s", t_first, "s")
    rows.add(c, "sampler_compiled_s", t_steady, "s")
    rows.add(c, "sampler_compiled_over_plain", t_steady / plain, "ratio")
    print(f"compiled: first {t_first:.1f}s, steady {t_steady:.2f}s ({t_steady / plain:.3f}x plain)", flush=True)


def phase_async(model_dir: Path, tmp: Path, a: argparse.Namespace, rows: Rows, cfg: dict) -> None:
    from unirl_stream.pipeline.driver import run

    t0 = time.time()
    run_dir = run(make_recipe(model_dir, tmp, a), run_dir=tmp / "async", live=False)
    ledger = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines() if x.strip()]
    trained = [r for r in ledger if r["status"] == "trained"]
    spans = [json.loads(x) for f in (run_dir / "spans").glob("*.jsonl") for x in f.read_text().splitlines()]
    start = min(s["t0"] for s in spans)
    end = max(r["t"] for r in trained)
    rows.add(cfg, "async_single_gpu_samples_per_s", len(trained) / (end - start), "samples/s")
    rows.add(cfg, "async_single_gpu_wall_s", time.time() - t0, "s")
    print(f"async on one GPU: {len(trained)} samples in {end - start:.1f}s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tiny", action="store_true", help="CPU dry run with a tiny model")
    ap.add_argument("--deadline-s", type=float, default=560.0, help="skip phases that would start later")
    ap.add_argument("--skip", nargs="*", default=[])
    ap.add_argument("--compile-mode", default="max-autotune-no-cudagraphs")
    a = ap.parse_args()
    import torch

    a.device = "cpu" if a.tiny else "cuda"
    a.height, a.width, a.frames, a.steps, a.guidance = (32, 32, 5, 4, 5.0) if a.tiny else (480, 832, 33, 20, 5.0)
    t_start = time.time()
    rows = Rows("gpu_wan22", Path(a.out) / ("gpu_wan22_tiny.jsonl" if a.tiny else "gpu_wan22.jsonl"))
    cfg = {"model": "TI2V-5B" + (" (tiny dry run)" if a.tiny else " random weights, bf16"),
           "geometry": f"{a.height}x{a.width}x{a.frames}", "steps": a.steps, "guidance": a.guidance,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "torch": torch.__version__}
    clock = Clock(a.device)
    with tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        t_build, model_dir = clock(lambda: build_model(tmp / "wan_ti2v_5b", a.tiny, a.device))
        rows.add(cfg, "build_and_save_s", t_build, "s")
        from unirl_stream.models.wan22 import Wan22Policy

        t_load, policy = clock(lambda: Wan22Policy.from_recipe(make_recipe(model_dir, tmp, a)))
        rows.add(cfg, "load_s", t_load, "s")
        times = phase_eager(policy, a, rows, cfg, clock)
        if "async" not in a.skip and time.time() - t_start < a.deadline_s - 400:
            phase_async(model_dir, tmp, a, rows, cfg)  # its policies load beside this one
        if "compile" not in a.skip and time.time() - t_start < a.deadline_s - 280:
            phase_compile(policy, a, rows, cfg, clock, times["plain"])
        else:
            print("compile phase skipped: not enough time left before the deadline", flush=True)
    eager = times["sampler"] / times["plain"]
    print(f"sampler/plain eager = {eager:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()

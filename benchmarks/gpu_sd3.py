"""SD3.5-Medium at real size on one GPU: plain ``StableDiffusion3Pipeline`` vs our sampler.

Random weights from SD3.5-Medium's published configs (MMDiT 24 blocks of 24 x 64 heads,
dual attention in blocks 0-12, RMS q/k norm; the 16-channel VAE), bf16, saved in the diffusers
layout and loaded back through the ``sd3`` plugin's real loader. The three text encoders keep
their real widths (CLIP-L 768, CLIP-G 1280, T5-XXL 4096) at 2 layers each: prompts are encoded
once and cached, so they are in no timing. 512x512, CFG 4.5, 10 steps, shift 3, LoRA r32/a64
on the recipe's 8 attention targets (``recipes/sd3_flowgrpo_pickscore.toml``).

Phases, each timed in the same process (median of ``--repeats`` after one warm-up):
  plain      ``StableDiffusion3Pipeline(prompt_embeds=..., output_type="latent")``, no adapter;
             and the same call over the producer's transformer (its live bf16 adapter)
  producer   our ``sample`` loop (per-step log-probs, 3 SDE steps of the first half) with a
             live bf16 r32 adapter (``model.lora.producer_dtype = "model"``), its linears fused
             (``lora.fuse_adapters``) and each transformer call a CUDA graph; also without
             the graphs, and with peft's own adapter path (what the fusion saves)
  trainer    the same loop with fp32 adapters (the trainer's numerics, TF32 on)
  replay     ``logprobs`` forward + backward of one sample's 3 SDE steps (fp32 adapters),
             reported per SDE step
  decode     VAE decode of one 512x512 latent

Usage: python benchmarks/gpu_sd3.py [--out DIR] [--batch 1 4 8]
       python benchmarks/gpu_sd3.py --tiny     (CPU dry run at 64x64 on the tiny SD3)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from rows import Rows  # noqa: E402

TRANSFORMER = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 24,
               "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096,
               "caption_projection_dim": 1536, "pooled_projection_dim": 2048, "pos_embed_max_size": 384,
               "dual_attention_layers": list(range(13)), "qk_norm": "rms_norm"}
VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 16, "down_block_types": ["DownEncoderBlock2D"] * 4,
       "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
       "layers_per_block": 2, "norm_num_groups": 32, "scaling_factor": 1.5305, "shift_factor": 0.0609,
       "use_quant_conv": False, "use_post_quant_conv": False}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "projection_dim": 768, "num_attention_heads": 12}
CLIP_G = {"hidden_size": 1280, "intermediate_size": 5120, "projection_dim": 1280, "num_attention_heads": 20}
T5 = {"d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_heads": 64, "feed_forward_proj": "gated-gelu"}


def build_model(out: Path, device: str) -> Path:
    """Random-weight SD3.5-Medium (2-layer text encoders) saved as a diffusers folder."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from unirl_stream.models import sd3_tiny
    from unirl_stream.models.tiny import VOCAB, build_tokenizer

    clip_ids = {k: sd3_tiny.CLIP_VOCAB[t] for k, t in
                (("bos_token_id", "<|startoftext|>"), ("eos_token_id", "<|endoftext|>"), ("pad_token_id", "<|pad|>"))}

    def clip(cfg: dict[str, Any]) -> Any:
        c = CLIPTextConfig(**cfg, num_hidden_layers=2, vocab_size=len(sd3_tiny.CLIP_VOCAB),
                           max_position_embeddings=77, hidden_act="gelu", **clip_ids)
        return CLIPTextModelWithProjection(c)

    def clip_tok() -> Any:
        return build_tokenizer(sd3_tiny.CLIP_VOCAB, bos="<|startoftext|>", eos="<|endoftext|>",
                               pad="<|pad|>", max_length=77)

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU: much faster than 2.5B params on CPU
        mods = {"transformer": SD3Transformer2DModel(**TRANSFORMER), "vae": AutoencoderKL(**VAE),
                "text_encoder": clip(CLIP_L), "text_encoder_2": clip(CLIP_G),
                "text_encoder_3": T5EncoderModel(T5Config(**T5, num_layers=2, vocab_size=len(VOCAB),
                                                          pad_token_id=0, eos_token_id=1,
                                                          decoder_start_token_id=0))}
    pipe = StableDiffusion3Pipeline(**{k: m.to(torch.bfloat16) for k, m in mods.items()},
                                    scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    tokenizer=clip_tok(), tokenizer_2=clip_tok(), tokenizer_3=build_tokenizer())
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out


def make_recipe(model: str, tmp: Path, a: argparse.Namespace, role_dtype: str) -> Any:
    from unirl_stream.models.sd3 import LORA_TARGETS
    from unirl_stream.recipe import decode

    prompts = tmp / "prompts.txt"
    prompts.write_text("a red fox running through snow\n")
    return decode({
        "run": {"name": "gpu", "seed": 0, "total_steps": 1, "output_dir": str(tmp)},
        "model": {"name": "sd3", "path": model, "dtype": "float32" if a.tiny else "bfloat16",
                  "device": a.device, "compile": "off", "max_sequence_length": 128 if not a.tiny else 8,
                  "lora": {"rank": 32, "alpha": 64.0, "experts": ["high"], "target_modules": LORA_TARGETS,
                           "producer_dtype": role_dtype}},
        "data": {"prompts": str(prompts), "shuffle": False},
        "sampling": {"height": a.size, "width": a.size, "num_frames": 1, "num_inference_steps": 10,
                     "guidance_scale": 4.5, "shift": 3.0, "eta": 0.7, "samples_per_prompt": 2,
                     "sde": {"kernel": "flow_sde", "selection": "random_k", "k": 3, "fraction": [0.0, 0.5]}},
        "algorithm": {"name": "decoupled_grpo", "updates_per_batch": 1, "micro_batch": 1, "lr": 3e-4},
        "reward": [{"name": "brightness"}],
        "pipeline": {"backend": "local", "max_staleness": 1, "groups_per_step": 1, "rollout_batch": 1},
        "logging": {"live": False},
    }, "gpu-benchmark")


def timed(fn: Any, repeats: int, cuda: bool) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after one warm-up."""
    import torch

    fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def profile_busy(label: str, fn: Any, table: bool) -> float:
    """Seconds the device was busy (kernel time) during one call of ``fn``; prints the host's
    most expensive operators when ``table`` (what keeps a launch-bound loop waiting)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    ka = prof.key_averages()
    busy = sum(e.self_device_time_total for e in ka) / 1e6
    print(f"[profile {label}] device busy {busy:.3f}s", flush=True)
    if table:
        print(ka.table(sort_by="self_cpu_time_total", row_limit=18), flush=True)
    return busy


def policy_phases(policy: Any, batch: int, a: argparse.Namespace, once: bool = False) -> tuple[float, Any]:
    """Our sampler's denoising loop (no decode) for ``batch`` samples; returns (s, trajectory)."""
    from unirl_stream.algorithms.sampler import sample
    from unirl_stream.algorithms.selection import select_steps
    from unirl_stream.api import Prompt

    prompts = [Prompt(id="gpu:0", text="a red fox running through snow")] * batch
    seeds = list(range(batch))
    cond = policy.embed(prompts)
    steps = [select_steps(policy.recipe.sampling.sde, 10, s, 0) for s in seeds]

    def run() -> Any:
        import torch

        with torch.no_grad():
            return sample(policy._velocity_fn(cond), policy.spec, seeds, steps, policy.slots,
                          policy.latent_shape, policy.sigmas, policy.device)

    if once:
        return run(), prompts
    return timed(run, a.repeats, a.cuda), prompts


def main() -> None:
    import torch
    from diffusers import StableDiffusion3Pipeline

    from unirl_stream.models.lora import peft_forward
    from unirl_stream.models.sd3 import SD3Policy

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--batch", nargs="*", type=int, default=[1, 4, 8])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="also profile one call of each loop")
    a = ap.parse_args()
    a.cuda = not a.tiny
    a.device, a.size = ("cpu", 64) if a.tiny else ("cuda", 512)
    if a.cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    rows = Rows("gpu_sd3", Path(a.out) / ("gpu_sd3_tiny.jsonl" if a.tiny else "gpu_sd3.jsonl"))
    base = {"gpu": torch.cuda.get_device_name(0) if a.cuda else "cpu", "torch": torch.__version__,
            "model": "tiny SD3 (dry run)" if a.tiny else "SD3.5-Medium random weights, bf16",
            "geometry": f"{a.size}x{a.size}", "steps": 10, "guidance": 4.5, "lora": "r32/a64, 8 targets"}
    with tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        model = "tiny:sd3" if a.tiny else str(build_model(tmp / "sd35m", a.device))
        producer = SD3Policy.from_recipe(make_recipe(model, tmp, a, "model"), role="producer")
        trainer = SD3Policy.from_recipe(make_recipe(model, tmp, a, "float32"), role="trainer")
        plain = StableDiffusion3Pipeline.from_pretrained(producer.components.path, dtype=producer.dtype,
                                                         local_files_only=True).to(a.device)
        plain.set_progress_bar_config(disable=True)
        for batch in a.batch:
            cfg = {**base, "batch": batch}
            _, prompts = policy_phases(producer, batch, a)
            cond, neg = producer.embed(prompts), producer._negative()
            kw = {"prompt_embeds": cond["encoder_hidden_states"], "pooled_prompt_embeds": cond["pooled_projections"],
                  "negative_prompt_embeds": neg["encoder_hidden_states"].expand(batch, -1, -1),
                  "negative_pooled_prompt_embeds": neg["pooled_projections"].expand(batch, -1),
                  "height": a.size, "width": a.size, "num_inference_steps": 10, "guidance_scale": 4.5,
                  "output_type": "latent"}
            t_plain = timed(lambda kw=kw: plain(**kw), a.repeats, a.cuda)
            # the same pipeline class over the producer's transformer: the live bf16 adapter through
            # peft, no log-probs (what a diffusers user pays for the adapter alone)
            with peft_forward(producer.experts):
                t_plain_lora = timed(lambda kw=kw: producer.pipeline(**kw), a.repeats, a.cuda)
                t_prod_peft, _ = policy_phases(producer, batch, a)
            t_prod, _ = policy_phases(producer, batch, a)
            graphs, producer.graphs = producer.graphs, None  # the same loop, each kernel launched from Python
            t_prod_launched, _ = policy_phases(producer, batch, a)
            producer.graphs = graphs
            t_train, _ = policy_phases(trainer, batch, a)
            rows.add(cfg, "producer_bf16_lora_without_cuda_graphs_vs_plain", t_prod_launched / t_plain, "x")
            rows.add(cfg, "producer_bf16_peft_lora_vs_plain", t_prod_peft / t_plain, "x")
            rows.add(cfg, "plain_pipeline_s", t_plain, "s")
            rows.add(cfg, "plain_pipeline_bf16_lora_s", t_plain_lora, "s")
            rows.add(cfg, "producer_bf16_lora_vs_plain_with_same_lora", t_prod / t_plain_lora, "x")
            rows.add(cfg, "producer_bf16_lora_s", t_prod, "s")
            rows.add(cfg, "producer_bf16_lora_vs_plain", t_prod / t_plain, "x")
            rows.add(cfg, "sampler_fp32_lora_s", t_train, "s")
            rows.add(cfg, "sampler_fp32_lora_vs_plain", t_train / t_plain, "x")
            print(f"batch {batch}: plain {t_plain:.3f}s (with peft's adapter {t_plain_lora:.3f}s), "
                  f"ours bf16 LoRA {t_prod:.3f}s ({t_prod / t_plain:.3f}x; without CUDA graphs "
                  f"{t_prod_launched / t_plain:.3f}x; peft's adapter path {t_prod_peft / t_plain:.3f}x), "
                  f"fp32 LoRA {t_train:.3f}s ({t_train / t_plain:.3f}x)", flush=True)
            if a.profile and a.cuda:
                try:
                    busy_plain = profile_busy(f"plain+adapter b{batch}", lambda kw=kw: producer.pipeline(**kw), False)
                    busy_ours = profile_busy(f"ours b{batch}", lambda b=batch: policy_phases(producer, b, a, once=True), True)
                except Exception as e:  # a diagnostic: the timings above stand without it
                    print(f"profile failed: {type(e).__name__}: {e}", flush=True)
                else:
                    rows.add(cfg, "plain_bf16_lora_device_busy_fraction", busy_plain / t_plain_lora, "ratio")
                    rows.add(cfg, "producer_bf16_lora_device_busy_fraction", busy_ours / t_prod, "ratio")
        if producer.graphs is not None:
            graph_check(producer, trainer, rows, base)
        replay_rows(trainer, rows, base, a)


def graph_check(producer: Any, trainer: Any, rows: Rows, base: dict[str, Any]) -> None:
    """A replayed graph computes what the eager call computes, also after a weight load (the
    adapters change in place): max |graph - eager| of one CFG-pair transformer call."""
    import torch

    from unirl_stream.api import Prompt
    from unirl_stream.models.flow import _cat, _expand

    prompts = [Prompt(id="gpu:0", text="a red fox running through snow")]
    cond = _cat(producer.embed(prompts), _expand(producer._negative(), 1))
    g = torch.Generator(device=producer.device).manual_seed(1)
    x = torch.randn(2, *producer.latent_shape, generator=g, device=producer.device).to(producer.dtype)
    t = torch.full((2,), 700.0, device=producer.device)
    gaps = []
    with torch.no_grad():
        for p in trainer.trainable_parameters():  # a live adapter: B != 0
            p.normal_(0.0, 0.01)
        for _ in range(2):
            producer.load_weights(trainer.export_weights())
            gaps.append(float((producer._call(0, x, t, cond) - producer._forward(0, x, t, cond)).abs().max()))
            for p in trainer.trainable_parameters():
                p.mul_(-1.5)
    rows.add({**base, "batch": 1}, "cuda_graph_vs_eager_max_abs", max(gaps), "abs")
    print(f"CUDA graph vs eager transformer call after weight loads: max |diff| {gaps}", flush=True)


def bare_pair(policy: Any, prompts: Any) -> Any:
    """A forward + backward of the trained transformer on the CFG pair of one sample at a
    replayed step's shapes, gradients into the adapters only: what replay cannot beat."""
    import torch

    from unirl_stream.models.flow import _cat, _expand

    cond = _cat(policy.embed(prompts), _expand(policy._negative(), 1))
    g = torch.Generator(device=policy.device).manual_seed(0)
    x = torch.randn(2, *policy.latent_shape, generator=g, device=policy.device).to(policy.dtype)
    t = torch.full((2,), 900.0, device=policy.device)
    params = list(policy.trainable_parameters())

    def step() -> None:
        policy._forward(0, x, t, cond).float().square().mean().backward()
        for p in params:
            p.grad = None

    return step


def replay_rows(policy: Any, rows: Rows, base: dict[str, Any], a: argparse.Namespace) -> None:
    """Replay (forward + backward) of one sample's 3 SDE steps, per step; decode of one image."""
    import torch

    from unirl_stream.api import Prompt

    prompts = [Prompt(id="gpu:0", text="a red fox running through snow")]
    td = policy.rollout(prompts, [7])
    gap = float((policy.logprobs(prompts, td).detach().cpu() - td["log_probs"]).abs().max())

    def step() -> None:
        policy.logprobs(prompts, td).sum().backward()

    k = td["log_probs"].shape[1]
    t_replay = timed(step, a.repeats, a.cuda)
    t_pair = timed(bare_pair(policy, prompts), a.repeats, a.cuda)
    if a.cuda:
        torch.cuda.reset_peak_memory_stats()
        step()
    peak = torch.cuda.max_memory_allocated() / 2**30 if a.cuda else 0.0
    t_dec = timed(lambda: policy.decode(td["latents"][:, -1].to(policy.device)), a.repeats, a.cuda)
    cfg = {**base, "batch": 1, "sde_steps": k}
    rows.add(cfg, "replay_fwd_bwd_per_sde_step_s", t_replay / k, "s")
    rows.add(cfg, "bare_pair_fwd_bwd_s", t_pair, "s")
    rows.add(cfg, "replay_per_sde_step_over_bare_pair", t_replay / k / t_pair, "ratio")
    rows.add(cfg, "replay_peak_gib", peak, "GiB")
    rows.add(cfg, "replay_vs_rollout_max_abs_logprob_gap", gap, "nats")
    rows.add(cfg, "vae_decode_s", t_dec, "s")
    print(f"replay {t_replay / k:.3f}s per SDE step ({t_replay / k / t_pair:.3f}x the bare pair {t_pair:.3f}s; "
          f"peak {peak:.1f} GiB), log-prob gap {gap:.2e}, "
          f"decode {t_dec:.3f}s", flush=True)


if __name__ == "__main__":
    main()

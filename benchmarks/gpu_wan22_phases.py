"""Phases of ``gpu_wan22.py``: each measures one thing and writes its rows at once.

Producer = ``Wan22Policy(role="producer")``: bf16 adapters (``model.lora.producer_dtype``
"model"), what a rollout worker runs. Trainer = ``role="trainer"``: fp32 adapter masters run
as bf16 GEMMs (``trainer_dtype`` "model", ``lora.fuse_adapters``), gradient checkpointing.
"peft" and "stock" rows run the same models through peft's own forward (``lora.peft_forward``)
and diffusers' default attention (``attention.stock_attention``, for a ``model.attention``
other than native): what stock diffusers + peft pay, fp32 adapter GEMMs (TF32) for the
trainer's masters. Plain ``WanPipeline`` runs with stock attention too. The live adapter is
the trainer's with every B entry set to +-3e-3 (about ten AdamW steps of lr 3e-4 from B = 0),
exported and loaded into the producer.

FLOPs are counted from the shapes (matmuls and attention only; 2 per multiply-add). For a
replay step the useful FLOPs are forward + backward without the checkpoint's recomputation:
frozen projections need input gradients only (1x their forward), attention 2x, the adapters
2x (input and weight gradients).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unirl_stream.models.attention import stock_attention
from unirl_stream.models.lora import peft_forward

PROMPT_TEXT = "a red fox running through snow"
LIVE_B = 3e-3


@dataclass
class Ctx:
    a: Any
    lay: dict[str, Any]
    cfg: dict[str, Any]
    rows: Any
    costs: Any
    clock: Any
    roof: float
    model_dir: Path
    tmp: Path
    make_recipe: Any


def matmul_roof(rows: Any, cfg: dict[str, Any], clock: Any, tiny: bool) -> float:
    """bf16 matmul TFLOP/s at 8192^3 (the ceiling every fraction below refers to)."""
    import torch

    n = 512 if tiny else 8192
    dt = torch.float32 if tiny else torch.bfloat16
    dev = "cpu" if tiny else "cuda"
    x, y = torch.randn(n, n, dtype=dt, device=dev), torch.randn(n, n, dtype=dt, device=dev)
    for _ in range(3):
        x @ y
    reps = 2 if tiny else 50
    t, _ = clock(lambda: [x @ y for _ in range(reps)])
    roof = 2 * n**3 * reps / t / 1e12
    rows.add(cfg, "matmul_roof_tflops", roof, "TFLOP/s")
    print(f"matmul roof {roof:.0f} TFLOP/s", flush=True)
    return roof


def step_flops(lay: dict[str, Any], tokens: int, text_len: int, rank: int, lora: bool) -> dict[str, float]:
    """FLOPs of one transformer pass over one sequence: projections, attention, adapters."""
    t = lay["transformer"]
    d, f, n, lt = t["num_attention_heads"] * t["attention_head_dim"], t["ffn_dim"], tokens, text_len
    lin = 2 * n * d * d * 4 + 2 * n * d * d * 2 + 2 * lt * d * d * 2 + 2 * 2 * n * d * f
    att = 2 * 2 * n * n * d + 2 * 2 * n * lt * d
    ad = (4 * n * d * rank * 6 + 4 * lt * d * rank * 2) if lora else 0
    b = lay["blocks"]
    return {"fwd": b * (lin + att + ad), "fwd_bwd": b * (2 * lin + 3 * att + 3 * ad)}


def _prompt() -> Any:
    from unirl_stream.api import Prompt

    return Prompt(id="p:0", text=PROMPT_TEXT)


def _no_decode(policy: Any) -> None:
    import torch

    policy.decode = lambda lat: torch.zeros(lat.shape[0], 1, 1, 1, 3, dtype=torch.uint8)


def load_pair(ctx: Ctx) -> tuple[Any, Any, Any]:
    """Producer and trainer from the saved folder; the live adapter set in both."""
    import torch

    from unirl_stream.models.wan22 import Wan22Policy

    recipe = ctx.make_recipe(ctx.model_dir, ctx.tmp, ctx.a, ctx.lay)
    t_load, producer = ctx.clock(lambda: Wan22Policy.from_recipe(recipe, role="producer"))
    ctx.rows.add(ctx.cfg, "load_s", t_load, "s")
    trainer = Wan22Policy.from_recipe(recipe, role="trainer")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in [(n, p) for m in trainer.trained.values() for n, p in m.named_parameters()]:
            if "lora_B" in name:
                p.copy_((torch.randint(0, 2, p.shape, generator=g) * 2 - 1).to(p) * LIVE_B)
    producer.load_weights(trainer.export_weights())
    return recipe, producer, trainer


def phase_rollout(ctx: Ctx, producer: Any, trainer: Any) -> dict[str, float]:
    """Plain WanPipeline (adapters off) vs our sampler: producer bf16 adapters, trainer fp32."""
    import torch

    a, lay, prompt = ctx.a, ctx.lay, _prompt()
    gen = torch.Generator("cpu").manual_seed(0)

    def plain() -> Any:
        with producer._adapters_disabled(), stock_attention(producer.experts):
            return producer.pipeline(prompt=prompt.text, negative_prompt="", height=a.height, width=a.width,
                                     num_frames=a.frames, num_inference_steps=a.steps,
                                     guidance_scale=lay["guidance"], output_type="latent", generator=gen).frames

    ctx.clock(plain)  # warm-up: kernels, allocator
    t_plain, latents = ctx.clock(plain)
    plain_peak = ctx.clock.peak_gib()
    real_decode = producer.decode
    for pol in (producer, trainer):
        _no_decode(pol)
    ctx.clock(lambda: producer.rollout([prompt], [1]))
    t_prod, _ = ctx.clock(lambda: producer.rollout([prompt], [2]))
    prod_peak = ctx.clock.peak_gib()
    t_trainer, _ = ctx.clock(lambda: trainer.rollout([prompt], [2]))
    with peft_forward(producer.experts), stock_attention(producer.experts):
        t_peft, _ = ctx.clock(lambda: producer.rollout([prompt], [2]))
    with producer._adapters_disabled():
        t_bare, _ = ctx.clock(lambda: producer.rollout([prompt], [2]))
    producer.decode = real_decode
    t_dec, _ = ctx.clock(lambda: producer.decode(latents.float()))
    dec_peak = ctx.clock.peak_gib()
    tokens = _tokens(producer)
    calls = a.steps * (2 if lay["guidance"] > 1 else 1)
    base_fl = step_flops(lay, tokens, producer.recipe.model.max_sequence_length, 64, False)["fwd"] * calls
    lora_fl = step_flops(lay, tokens, producer.recipe.model.max_sequence_length, 64, True)["fwd"] * calls
    c = ctx.cfg
    for metric, v, unit in [
        ("plain_pipeline_s", t_plain, "s"), ("plain_pipeline_peak", plain_peak, "GiB"),
        ("plain_tflops", base_fl / t_plain / 1e12, "TFLOP/s"),
        ("sampler_bf16_lora_s", t_prod, "s"), ("sampler_bf16_lora_peak", prod_peak, "GiB"),
        ("sampler_bf16_lora_over_plain", t_prod / t_plain, "ratio"),
        ("sampler_bf16_lora_tflops", lora_fl / t_prod / 1e12, "TFLOP/s"),
        ("sampler_trainer_lora_over_plain", t_trainer / t_plain, "ratio"),
        ("sampler_peft_bf16_lora_over_plain", t_peft / t_plain, "ratio"),
        ("sampler_no_lora_over_plain", t_bare / t_plain, "ratio"),
        ("vae_decode_s", t_dec, "s"), ("vae_decode_peak", dec_peak, "GiB"),
    ]:
        ctx.rows.add(c, metric, v, unit)
    print(f"[{c['layout']}] plain {t_plain:.2f}s  producer bf16 LoRA {t_prod:.2f}s ({t_prod / t_plain:.3f}x)  "
          f"peft bf16 LoRA {t_peft / t_plain:.3f}x  trainer {t_trainer / t_plain:.3f}x  no LoRA {t_bare / t_plain:.3f}x  "
          f"decode {t_dec:.2f}s", flush=True)
    return {"plain": t_plain, "rollout": t_prod, "decode": t_dec, "plain_flops": base_fl, "lora_flops": lora_fl}


def _tokens(policy: Any) -> int:
    c, t, h, w = policy.latent_shape
    p = policy.experts[0].config.patch_size
    return (t // p[0]) * (h // p[1]) * (w // p[2])


def _gap(ctx: Ctx, name: str, replayed: Any, recorded: Any) -> Any:
    """Rows for |replayed - recorded| log-prob per SDE step of one sample."""
    g = (replayed.cpu() - recorded.cpu()).abs()[0]
    clip = ctx.a.clip_range
    c = {**ctx.cfg, "per_step": [float(x) for x in g], "clip_range": clip, "live_lora_b": LIVE_B}
    ctx.rows.add(c, f"logprob_gap_{name}_max", float(g.max()), "nats/element")
    ctx.rows.add(c, f"logprob_gap_{name}_mean", float(g.mean()), "nats/element")
    ctx.rows.add(c, f"logprob_gap_{name}_steps_over_clip", float((g > clip).float().mean()), "fraction")
    print(f"[{ctx.cfg['layout']}] log-prob gap per SDE step, {name}: max {float(g.max()):.2e} "
          f"mean {float(g.mean()):.2e} (clip range {clip})", flush=True)
    return g


def phase_mismatch(ctx: Ctx, producer: Any, trainer: Any) -> Any:
    """|producer - trainer| log-prob per SDE step at the same weights: the default trainer (bf16
    adapter GEMMs from fp32 masters), and peft's fp32 adapter path (``trainer_dtype`` float32),
    next to the trainer replaying its own rollout (batch-shape rounding only)."""
    import torch

    prompt = _prompt()
    td = producer.rollout([prompt], [7])
    td_own = trainer.rollout([prompt], [7])
    with torch.no_grad():
        _gap(ctx, "bf16_producer", trainer.logprobs([prompt], td), td["log_probs"])
        with peft_forward(trainer.experts):
            _gap(ctx, "bf16_producer_fp32_trainer", trainer.logprobs([prompt], td), td["log_probs"])
        _gap(ctx, "own_rollout", trainer.logprobs([prompt], td_own), td_own["log_probs"])
    td["advantage"] = torch.ones(1)
    return td


def phase_reward(ctx: Ctx) -> float:
    """video_pickscore with a CLIP-H-sized random CLIP (ViT-H/14 224 px, 24-layer 1024 text),
    bf16, 8 frames of each 33-frame video, 4 samples a batch: seconds per sample."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from unirl_stream import registry
    from unirl_stream.api import Prompt
    from unirl_stream.rewards import testing

    a = ctx.a
    folder = ctx.tmp / "clip_h"
    if not folder.exists():
        testing.save_tiny_clip(folder, image_size=32 if a.tiny else 224)
        if not a.tiny:
            vocab = json.loads((folder / "config.json").read_text())["text_config"]["vocab_size"]
            text = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                        hidden_act="gelu", vocab_size=vocab, max_position_embeddings=77,
                        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
            vision = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                          hidden_act="gelu", image_size=224, patch_size=14)
            with torch.device(a.device):  # 1B parameters: initialised on the GPU in seconds
                clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=1024))
            clip.save_pretrained(str(folder))
            del clip
    cls = registry.load("rewards", "video_pickscore")
    scorer = cls(cls.Config(model=str(folder), processor=str(folder), device=a.device,
                            dtype="float32" if a.tiny else "bfloat16", batch_size=4))
    media = torch.randint(0, 256, (4, a.frames, a.height, a.width, 3), dtype=torch.uint8)
    prompts = [Prompt(id=f"p:{i}", text=PROMPT_TEXT) for i in range(4)]
    ctx.clock(lambda: scorer.score(media, prompts))
    t, _ = ctx.clock(lambda: scorer.score(media, prompts))
    ctx.rows.add({**ctx.cfg, "scorer": "video_pickscore, CLIP-H size, 8 frames, bf16"}, "reward_s_per_sample",
                 t / 4, "s")
    print(f"[{ctx.cfg['layout']}] reward {t / 4:.3f}s per sample", flush=True)
    return t / 4


def first_step(policy: Any) -> Any:
    """One guided velocity of the first expert at the rollout's shapes (what a producer's first
    denoising step computes)."""
    import torch

    emb = policy.embed([_prompt()])
    x = torch.randn(1, *policy.latent_shape, device=policy.device)
    t = torch.full((1,), 999.0, device=policy.device)
    rows = torch.zeros(1, dtype=torch.long, device=policy.device)
    with torch.no_grad():
        return policy._velocity_fn(emb)(0, x, t, rows)


def phase_compile(ctx: Ctx, producer: Any, trainer: Any, eager: dict[str, float], td: Any) -> dict[str, float]:
    """Regional compilation of producer and trainer (the CUDA default), cold cache."""
    import msgspec
    import torch
    from gpu_wan22_replay import phase_replay

    from unirl_stream.models.compile import compile_experts

    m = msgspec.structs.replace(producer.recipe.model, compile="regional")
    producer.compiled = compile_experts(producer.experts, m, producer.device.type)
    producer.graphs = None  # as a producer built compiled runs (graphs replay eager kernels)
    t_first, _ = ctx.clock(lambda: first_step(producer))
    t_first_roll, _ = ctx.clock(lambda: producer.rollout([_prompt()], [1]))
    t_roll, _ = ctx.clock(lambda: producer.rollout([_prompt()], [2]))
    c = {**ctx.cfg, "compile": "regional"}
    tf = eager["lora_flops"] / t_roll / 1e12
    frac = tf / ctx.roof
    for metric, v, unit in [
        ("compile_first_step_s", t_first, "s"), ("compile_next_rollout_s", t_first_roll, "s"),
        ("sampler_compiled_s", t_roll, "s"),
        ("sampler_compiled_over_plain", t_roll / eager["plain"], "ratio"),
        ("sampler_compiled_tflops", tf, "TFLOP/s"), ("sampler_compiled_roof_fraction", frac, "ratio"),
    ]:
        ctx.rows.add(c, metric, v, unit)
    print(f"[{ctx.cfg['layout']}] compiled producer: first step {t_first:.1f}s, rollout {t_roll:.2f}s "
          f"({t_roll / eager['plain']:.3f}x plain, {tf:.0f} TFLOP/s = {frac:.2f} of roof)", flush=True)
    td_c = producer.rollout([_prompt()], [7])  # the eager producer's sample, now compiled
    _gap(ctx, "compiled_vs_eager_producer", td_c["log_probs"], td["log_probs"])
    trainer.compiled = compile_experts(trainer.experts, m, trainer.device.type)
    rep = phase_replay(ctx, trainer, td, "regional")
    step = rep["grpo"] / int(td["sde_steps"].shape[1])
    ctx.rows.add(c, "replay_compiled_per_step_over_eager_pair", step / eager["pair"], "ratio")
    ctx.rows.add(c, "replay_compiled_per_step_over_eager_stock_pair", step / eager["stock_pair"], "ratio")
    with torch.no_grad():  # what a compiled deployment sees: compiled trainer vs compiled producer
        _gap(ctx, "compiled_bf16_producer", trainer.logprobs([_prompt()], td_c), td_c["log_probs"])
    from torch._dynamo.utils import counters

    ctx.rows.add(c, "dynamo_unique_graphs", float(counters["stats"]["unique_graphs"]), "count")
    return {"rollout": t_roll, **{f"replay_{k}": v for k, v in rep.items()}}


def phase_warm(ctx: Ctx) -> None:
    """A second process on the warm compile cache: seconds from policy construction to its
    first compiled step (the compile cache dir holds what the first process compiled)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(Path(__file__).parent / "gpu_wan22.py"), "--warm-start", str(ctx.model_dir),
           "--layout", ctx.cfg["layout"], "--cache", str(ctx.a.cache), "--out", ctx.a.out]
    cmd += ["--tiny"] if ctx.a.tiny else []
    cmd += ["--a14b-blocks", str(ctx.a.a14b_blocks)]
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env, timeout=300)
    ctx.rows.add(ctx.cfg, "warm_process_wall_s", time.time() - t0, "s")


def stage_costs(ctx: Ctx, k: int, times: dict[str, float], compiled: bool) -> None:
    """One row per stage: seconds of one GPU per sample, for the trainer-group planner. The
    transformer-bound stages are scaled from the measured blocks to the full depth."""
    scale = ctx.lay["full_blocks"] / ctx.lay["blocks"]
    base = {"layout": ctx.cfg["layout"], "model": ctx.lay["name"], "geometry": ctx.cfg["geometry"],
            "steps": ctx.a.steps, "sde_steps": k, "guidance": ctx.lay["guidance"],
            "compile": "regional" if compiled else "off", "measured_blocks": ctx.lay["blocks"],
            "full_blocks": ctx.lay["full_blocks"], "gpu": ctx.cfg["gpu"]}
    for stage, sec, scaled, note in [
        ("rollout", times["rollout"], True, "SDE sampler with bf16 adapters, batch 1, no decode"),
        ("decode", times["decode"], False, "VAE decode of one video"),
        ("reward", times["reward"], False, "video_pickscore, CLIP-H size, bf16, 8 frames"),
        ("replay", times["replay"], True, "decoupled_grpo: proximal pass + one update; add "
                                          "(updates_per_batch - 1) x replay_update_s"),
    ]:
        extra = {"replay_update_s": times["update"] * scale, "proximal_s": times["proximal"] * scale} \
            if stage == "replay" else {}
        ctx.costs.add({**base, "stage": stage, "note": note, "measured_s": sec, **extra},
                      "stage_s_per_sample", sec * (scale if scaled else 1.0), "s")


def run_layout(ctx: Ctx) -> None:
    import torch._dynamo
    from gpu_wan22_attention import phase_attention
    from gpu_wan22_profile import phase_profile
    from gpu_wan22_replay import phase_replay
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # the previous layout's graphs would count against the recompile limit
    counters.clear()  # and its graphs in this layout's dynamo_unique_graphs
    skip = set(ctx.a.skip)
    _, producer, trainer = load_pair(ctx)
    eager = phase_rollout(ctx, producer, trainer)
    _no_decode(producer)
    td = phase_mismatch(ctx, producer, trainer)
    reward = phase_reward(ctx) if "reward" not in skip else 0.0
    rep = phase_replay(ctx, trainer, td, "eager")
    eager["pair"], eager["stock_pair"] = rep["pair"], rep["stock_pair"]
    k = int(td["sde_steps"].shape[1])
    times = {"rollout": eager["rollout"], "decode": eager["decode"], "reward": reward,
             "replay": rep["decoupled"], "update": rep["grpo"], "proximal": rep["proximal"]}
    if ctx.a.profile == ctx.cfg["layout"]:
        phase_profile(ctx, trainer, td)
    if "attention" not in skip:
        phase_attention(ctx, producer, eager["plain"], compiled=False)
    if "compile" not in skip:
        comp = phase_compile(ctx, producer, trainer, eager, td)
        if "attention" not in skip:  # last: it resets dynamo (the trainer's graphs too)
            phase_attention(ctx, producer, eager["plain"], compiled=True)
        times.update(rollout=comp["rollout"], replay=comp["replay_decoupled"], update=comp["replay_grpo"],
                     proximal=comp["replay_proximal"])
        if "warm" not in skip:
            phase_warm(ctx)
    stage_costs(ctx, k, times, "compile" not in skip)
    del producer, trainer

"""Replay phase of ``gpu_wan22.py``: bare pairs (stock and ours) against our replay.

For a replay step the useful FLOPs are forward + backward without the checkpoint's
recomputation (``gpu_wan22_phases.step_flops``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gpu_wan22_phases import Ctx, _prompt, _tokens, step_flops

from unirl_stream.models import checkpointing
from unirl_stream.models.attention import stock_attention
from unirl_stream.models.lora import peft_forward


def bare_pair(trainer: Any) -> Any:
    """A forward+backward of the trained expert on the replay's input (one sample, the CFG
    pair when guidance > 1), checkpointing on, gradients into the adapters only."""
    import torch

    model = trainer.experts[0]
    rows = 2 if trainer.guidance[0] > 1 else 1
    g = torch.Generator(device=trainer.device).manual_seed(0)
    x = torch.randn(rows, *trainer.latent_shape, generator=g, device=trainer.device).to(trainer.dtype)
    t = torch.full((rows,), 900.0, device=trainer.device)
    tt = trainer._timestep_input(t, x)
    enc = torch.randn(rows, trainer.recipe.model.max_sequence_length, model.config.text_dim, generator=g,
                      device=trainer.device).to(trainer.dtype)
    params = list(trainer.trainable_parameters())

    def step() -> None:
        out = model(hidden_states=x, timestep=tt, encoder_hidden_states=enc, return_dict=False)[0]
        out.float().square().mean().backward()
        for p in params:
            p.grad = None

    return step


@contextmanager
def plain_checkpointing(trainer: Any) -> Iterator[None]:
    """The trained experts under diffusers' own checkpointing while inside (the stock pair)."""
    for model in trainer.trained.values():
        checkpointing.enable(model, "nothing")
    try:
        yield
    finally:
        for model in trainer.trained.values():
            checkpointing.enable(model, trainer.recipe.model.checkpoint_saves)


def sm_clock_mhz() -> float:
    """The GPU's SM clock now (NVML), 0 where there is none."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return float(pynvml.nvmlDeviceGetClockInfo(pynvml.nvmlDeviceGetHandleByIndex(0), pynvml.NVML_CLOCK_SM))
    except Exception:  # noqa: BLE001 - no NVML (CPU dry run): the row reads 0
        return 0.0


def _timed_pair(ctx: Ctx, step: Any, reps: int) -> float:
    step()
    t, _ = ctx.clock(lambda: [step() for _ in range(reps)])
    return t / reps


def phase_replay(ctx: Ctx, trainer: Any, td: Any, tag: str) -> dict[str, float]:
    """Bare pairs vs our replay of one sample: ``grpo``'s update (no proximal pass), and the
    proximal pass that ``decoupled_grpo`` adds before its updates (timed alone: the two
    objectives' updates cost the same); per SDE step, peak memory. Two bare pairs, each timed
    over as many calls as the replay has SDE steps (the same stretch of sustained load): the
    stock one (the same model through peft's own forward: fp32 adapter GEMMs from the masters)
    (with diffusers' plain checkpointing) and ours (the trainer's fused adapters and
    checkpointing that keeps the attention: what replay adds to it is our overhead alone)."""
    import torch

    from unirl_stream.algorithms.losses import GRPO
    from unirl_stream.algorithms.train import batch_logprobs, train_on_batch

    alg, prompt = trainer.recipe.algorithm, _prompt()
    k = int(td["sde_steps"].shape[1])
    reps = 1 if ctx.a.tiny else k
    opt = torch.optim.SGD(list(trainer.trainable_parameters()), lr=0.0)  # keep the live adapter
    out: dict[str, float] = {}
    if tag == "eager":  # compiled blocks would recompile for peft's forward: the stock pair is eager
        with peft_forward(trainer.experts), stock_attention(trainer.experts), plain_checkpointing(trainer):
            out["stock_pair"] = _timed_pair(ctx, bare_pair(trainer), reps)
            out["stock_pair_peak"] = ctx.clock.peak_gib()
    pair = bare_pair(trainer)
    out["pair_before"] = _timed_pair(ctx, pair, reps)
    out["pair_peak"] = ctx.clock.peak_gib()
    out["clock_before"] = sm_clock_mhz()
    for name, run in (("grpo", lambda: train_on_batch(trainer, GRPO(alg), opt, [prompt], td, alg)),
                      ("proximal", lambda: batch_logprobs(trainer, [prompt], td, alg.micro_batch))):
        out[name + "_first"], _ = ctx.clock(run)
        if tag != "eager":  # a compiled second call still recompiled once in the CPU dry run
            run()
        out[name], _ = ctx.clock(run)
        out[name + "_peak"] = ctx.clock.peak_gib()
        if name == "grpo":  # the pair again right after: sustained load lowers clocks over time
            out["clock_after"] = sm_clock_mhz()
            out["pair_after"] = _timed_pair(ctx, pair, reps)
    out["pair"] = (out["pair_before"] + out["pair_after"]) / 2
    out["decoupled"] = out["grpo"] + out["proximal"]
    _replay_rows(ctx, trainer, out, k, tag)
    return out


def _replay_rows(ctx: Ctx, trainer: Any, out: dict[str, float], k: int, tag: str) -> None:
    rows = 2 if trainer.guidance[0] > 1 else 1
    fl = step_flops(ctx.lay, _tokens(trainer), trainer.recipe.model.max_sequence_length, 64, True)["fwd_bwd"] * rows
    c = {**ctx.cfg, "sde_steps": k, "compile": tag}
    step = out["grpo"] / k
    table = [
        ("bare_pair_fwd_bwd_ckpt_s", out["pair"], "s"), ("bare_pair_peak", out["pair_peak"], "GiB"),
        ("bare_pair_before_replay_s", out["pair_before"], "s"), ("bare_pair_after_replay_s", out["pair_after"], "s"),
        ("sm_clock_before_replay", out["clock_before"], "MHz"), ("sm_clock_after_replay", out["clock_after"], "MHz"),
        ("bare_pair_tflops", fl / out["pair"] / 1e12, "TFLOP/s"),
        ("replay_grpo_per_sample_s", out["grpo"], "s"), ("replay_grpo_peak", out["grpo_peak"], "GiB"),
        ("replay_grpo_per_step_over_pair", step / out["pair"], "ratio"),
        ("replay_grpo_tflops", fl * k / out["grpo"] / 1e12, "TFLOP/s"),
        ("proximal_pass_s", out["proximal"], "s"), ("proximal_pass_peak", out["proximal_peak"], "GiB"),
    ]
    if "stock_pair" in out:
        table += [("stock_pair_fwd_bwd_ckpt_s", out["stock_pair"], "s"),
                  ("stock_pair_peak", out["stock_pair_peak"], "GiB"),
                  ("stock_pair_tflops", fl / out["stock_pair"] / 1e12, "TFLOP/s"),
                  ("replay_grpo_per_step_over_stock_pair", step / out["stock_pair"], "ratio")]
    else:
        table.append(("replay_first_call_s", out["grpo_first"], "s"))
    for metric, v, unit in table:
        ctx.rows.add(c, metric, v, unit)
    stock = f", stock pair {out['stock_pair']:.3f}s ({step / out['stock_pair']:.3f}x)" if "stock_pair" in out else ""
    print(f"[{ctx.cfg['layout']} {tag}] bare pair {out['pair']:.3f}s (before replay {out['pair_before']:.3f}s at "
          f"{out['clock_before']:.0f} MHz, after {out['pair_after']:.3f}s at {out['clock_after']:.0f} MHz){stock}; replay grpo {out['grpo']:.2f}s = "
          f"{step:.3f}s/step ({step / out['pair']:.3f}x pair), proximal pass "
          f"{out['proximal']:.2f}s, peak {out['grpo_peak']:.1f} GiB", flush=True)

"""The trainer's memory modes on one GPU: today's replay vs FSDP2 (world size 1), per sample.

Real-size Wan2.2-TI2V-5B with random weights (built by ``gpu_wan22.build_model``), bf16,
LoRA r64, 480x832x33, CFG 5, 20 steps, SDE window [0, 0.6), gradient checkpointing per
block. One sample is rolled out, then one ``train_on_batch`` update (proximal pass + update)
is timed, best of ``--repeats``, for:

  replicate   the policy as the single-rank trainer holds it (no process group)
  fsdp        the same policy after ``parallel.shard`` on a one-rank NCCL group: every
              transformer block of the expert and the expert itself under FSDP2

Rows: replay seconds per sample and peak GiB per mode, and fsdp / replicate.

Usage: python benchmarks/gpu_trainer_modes.py [--out DIR] [--repeats 2]
       python benchmarks/gpu_trainer_modes.py --tiny   (CPU dry run, gloo)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from gpu_wan22 import Clock, build_model, make_recipe  # noqa: E402
from rows import Rows  # noqa: E402


def replay_time(policy: Any, clock: Clock, repeats: int, dp: Any) -> tuple[float, float, int]:
    import torch

    from unirl_stream.algorithms.losses import GRPO
    from unirl_stream.algorithms.train import make_optimizer, train_on_batch
    from unirl_stream.api import Prompt

    prompt = Prompt(id="p:0", text="a red fox running through snow")
    td = policy.rollout([prompt], [3])
    td["advantage"] = torch.ones(1)
    alg = policy.recipe.algorithm
    opt = make_optimizer(policy, alg)
    step = lambda: train_on_batch(policy, GRPO(alg), opt, [prompt], td, alg, dp=dp)  # noqa: E731
    clock(step)  # warm-up
    best, peak = float("inf"), 0.0
    for _ in range(repeats):
        t, _ = clock(step)
        best, peak = min(best, t), max(peak, clock.peak_gib())
    return best, peak, int(td["sde_steps"].shape[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    import torch

    from unirl_stream.algorithms.parallel import DataParallel, join, shard
    from unirl_stream.models.wan22 import Wan22Policy

    a.device = "cpu" if a.tiny else "cuda"
    a.height, a.width, a.frames, a.steps, a.guidance = (32, 32, 5, 4, 5.0) if a.tiny else (480, 832, 33, 20, 5.0)
    rows = Rows("gpu_trainer_modes", Path(a.out) / ("gpu_trainer_modes_tiny.jsonl" if a.tiny else "gpu_trainer_modes.jsonl"))
    cfg = {"model": "TI2V-5B" + (" (tiny dry run)" if a.tiny else " random weights, bf16"),
           "geometry": f"{a.height}x{a.width}x{a.frames}", "steps": a.steps, "guidance": a.guidance,
           "lora_rank": 64, "gradient_checkpointing": not a.tiny, "world_size": 1,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "torch": torch.__version__}
    clock = Clock(a.device)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        model_dir = build_model(tmp / "wan_ti2v_5b", a.tiny, a.device)
        policy = Wan22Policy.from_recipe(make_recipe(model_dir, tmp, a))
        t_rep, peak_rep, k = replay_time(policy, clock, a.repeats, DataParallel.single())
        rows.add({**cfg, "mode": "replicate", "sde_steps": k}, "replay_update_per_sample_s", t_rep, "s")
        rows.add({**cfg, "mode": "replicate", "sde_steps": k}, "replay_peak", peak_rep, "GiB")
        print(f"replicate: replay {t_rep:.2f} s per sample over {k} SDE steps, peak {peak_rep:.1f} GiB", flush=True)
        board: dict[str, str] = {}
        dp = join(0, 1, post=lambda v: board.__setitem__("a", v), read=lambda: board.get("a"),
                  backend="gloo" if a.tiny else "nccl", timeout_s=120, host="127.0.0.1")
        shard(policy, dp)
        if not a.tiny:
            torch.cuda.empty_cache()
        t_fsdp, peak_fsdp, _ = replay_time(policy, clock, a.repeats, dp)
        rows.add({**cfg, "mode": "fsdp", "sde_steps": k}, "replay_update_per_sample_s", t_fsdp, "s")
        rows.add({**cfg, "mode": "fsdp", "sde_steps": k}, "replay_peak", peak_fsdp, "GiB")
        rows.add({**cfg, "sde_steps": k}, "replay_fsdp_over_replicate", t_fsdp / t_rep, "ratio")
        print(f"fsdp (world 1): replay {t_fsdp:.2f} s per sample, peak {peak_fsdp:.1f} GiB; "
              f"fsdp / replicate = {t_fsdp / t_rep:.3f} (target <= 1.05)", flush=True)
        dp.close()



if __name__ == "__main__":
    main()

"""Each algorithm's rollout and trainer cost per sample at one geometry (rows + ratios to grpo).

For ``grpo``, ``flow_dppo``, ``nft`` and ``refl`` on the same model and geometry: producers'
rollout seconds per sample (SDE rollouts for the GRPO family, ODE for nft/refl) and the
trainer's ``train_batch`` seconds per sample with each algorithm's recipe settings
(grpo / flow_dppo: 3 SDE steps drawn from the first half, 2 updates per batch; nft: the
rollout's sigmas as training times (int(0.99 N)), 1 update; refl: DRaFT-1, 1 update, brightness
as the differentiable reward so the row is the algorithm's machinery: a real reward model adds
its own forward + backward). Also the bytes each sample puts in the store.

Usage: python benchmarks/algorithms.py --tiny          (CPU, the quickstarts' tiny SD3, 32x32)
       python benchmarks/algorithms.py                 (one GPU: SD3.5-Medium random weights, 512x512)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).parent))
from rows import Rows  # noqa: E402

ALGORITHMS = {
    "grpo": ({"selection": "random_k", "k": 3, "fraction": [0.0, 0.5]}, {"updates_per_batch": 2}, {}),
    "flow_dppo": ({"selection": "random_k", "k": 3, "fraction": [0.0, 0.5]}, {"updates_per_batch": 2}, {}),
    "nft": ({"selection": "none"}, {"updates_per_batch": 1}, {}),
    "refl": ({"selection": "none"}, {"updates_per_batch": 1}, {"mode": "draft_k", "steps": 1}),
}


def recipe_for(name: str, model: str, a: argparse.Namespace, tmp: Path) -> Any:
    from unirl_stream.models.sd3 import LORA_TARGETS
    from unirl_stream.recipe import decode

    sde, alg, opts = ALGORITHMS[name]
    prompts = tmp / "prompts.txt"
    prompts.write_text("a red fox running through snow\n")
    return decode({
        "run": {"name": "bench", "seed": 0, "total_steps": 1, "output_dir": str(tmp)},
        "model": {"name": "sd3", "path": model, "dtype": "float32" if a.tiny else "bfloat16", "device": a.device,
                  "compile": "off", "max_sequence_length": 8 if a.tiny else 128,
                  "gradient_checkpointing": not a.tiny,
                  "lora": {"rank": 32, "alpha": 64.0, "experts": ["high"], "target_modules": LORA_TARGETS,
                           "producer_dtype": "float32"}},
        "data": {"prompts": str(prompts), "shuffle": False},
        "sampling": {"height": a.size, "width": a.size, "num_frames": 1, "num_inference_steps": 10,
                     "guidance_scale": 4.5, "shift": 3.0, "eta": 0.7, "samples_per_prompt": a.batch,
                     "sde": {"kernel": "flow_sde", **sde}},
        "algorithm": {"name": name, "lr": 3e-4, "micro_batch": a.micro_batch, "options": opts, **alg},
        "reward": [{"name": "brightness"}],
        "pipeline": {"backend": "local", "max_staleness": 1, "groups_per_step": 1, "rollout_batch": a.batch},
        "logging": {"live": False},
    }, "algorithms-benchmark")


def sync(a: argparse.Namespace) -> None:
    if a.cuda:
        import torch

        torch.cuda.synchronize()


def measure(name: str, model: str, a: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """(rollout s/sample, trainer s/sample, store bytes/sample) of one algorithm; medians."""
    import statistics

    import torch

    from unirl_stream.algorithms.base import build
    from unirl_stream.algorithms.train import make_optimizer
    from unirl_stream.api import Prompt
    from unirl_stream.models.sd3 import SD3Policy

    recipe = recipe_for(name, model, a, tmp)
    policy = SD3Policy.from_recipe(recipe)
    algorithm = build(recipe)
    if name == "refl":  # the machinery, not a reward model: differentiable brightness
        algorithm._reward = lambda frames, prompts: frames.float().mean(dim=(1, 2, 3, 4)) / 255.0
    opt = make_optimizer(policy, recipe.algorithm)
    prompts = [Prompt(id="bench:0", text="a red fox running through snow")] * a.batch
    roll, train = [], []
    for r in range(a.repeats + 1):
        sync(a)
        t0 = time.perf_counter()
        td = policy.rollout(prompts, list(range(r * a.batch, (r + 1) * a.batch)))
        sync(a)
        t1 = time.perf_counter()
        td["advantage"] = torch.linspace(-1, 1, a.batch)
        algorithm.train_batch(policy, opt, prompts, td)
        sync(a)
        if r:  # the first round warms up
            roll.append((t1 - t0) / a.batch)
            train.append((time.perf_counter() - t1) / a.batch)
    nbytes = sum(v[0].numel() * v.element_size() for v in td.values())
    peak = torch.cuda.max_memory_allocated() / 2**30 if a.cuda else 0.0
    del policy, algorithm, opt
    if a.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return {"rollout_s_per_sample": statistics.median(roll), "trainer_s_per_sample": statistics.median(train),
            "store_bytes_per_sample": float(nbytes), "peak_gib": peak}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    a.cuda = not a.tiny
    a.device, a.size = ("cpu", 32) if a.tiny else ("cuda", 512)
    if a.cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.set_num_threads(1)
    rows = Rows("algorithms", Path(a.out) / ("algorithms_cpu.jsonl" if a.tiny else "algorithms_gpu.jsonl"))
    base = {"device": torch.cuda.get_device_name(0) if a.cuda else "cpu (1 thread)", "torch": torch.__version__,
            "model": "tiny SD3" if a.tiny else "SD3.5-Medium random weights, bf16", "geometry": f"{a.size}x{a.size}",
            "steps": 10, "guidance": 4.5, "batch": a.batch, "micro_batch": a.micro_batch, "lora": "r32/a64"}
    with tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        if a.tiny:
            model = "tiny:sd3"
        else:
            from gpu_sd3 import build_model

            model = str(build_model(tmp / "sd35m", a.device))
        got = {name: measure(name, model, a, tmp) for name in ALGORITHMS}
    for name, m in got.items():
        cfg = {**base, "algorithm": name, "settings": msgspec.to_builtins(ALGORITHMS[name])}
        for key, value in m.items():
            rows.add(cfg, key, value, "B" if key.endswith("bytes_per_sample") else ("GiB" if key == "peak_gib" else "s"))
        ratio = m["trainer_s_per_sample"] / got["grpo"]["trainer_s_per_sample"]
        rows.add(cfg, "trainer_s_per_sample_vs_grpo", ratio, "x")
        print(f"{name:10s} rollout {m['rollout_s_per_sample']:.3f}s/sample  trainer {m['trainer_s_per_sample']:.3f}s/sample "
              f"({ratio:.2f}x grpo)  store {m['store_bytes_per_sample'] / 1024:.1f} KiB/sample  peak {m['peak_gib']:.1f} GiB",
              flush=True)


if __name__ == "__main__":
    main()

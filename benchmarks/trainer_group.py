"""The data-parallel trainer group: throughput at N = 1 and 2 ranks, and weight publish latency.

1. ``throughput``: the tiny two-expert Wan2.2 LoRA trainer, batches of 8 trajectories (6 SDE
   steps, 2 updates per batch), replayed by N gloo ranks in real processes, each with
   one thread each (so N ranks use N cores; with more threads a single rank on a shared VM
   spends its time in BLAS spin-waits). Rows: seconds per optimizer step and samples/s per N,
   and the ratio N=2 / N=1, with the machine's load average: on a 2-core machine the two
   ranks take both cores, so the ratio is the scaling from one core to two, overhead included.
2. ``publish``: publish-to-loaded latency of one weight version at the Wan2.2-A14B adapter
   size (LoRA r64 on q/k/v/o of both attentions of both experts: 0.42 B parameters, 0.84 GB
   in bf16) through today's path: safetensors bytes -> ``CoordinatorWeights.publish`` (the
   coordinator actor ``ray.put``s them) -> a producer actor's ``poll`` (``ray.get`` + bytes)
   -> safetensors load. Rows: each phase and the total, best of ``--repeats``.

Usage: python benchmarks/trainer_group.py [--part throughput|publish|all] [--repeats 3]
       [--out benchmarks/results/trainer_group.jsonl]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from rows import Rows  # noqa: E402

BATCH, STEPS, WARMUP = 8, 4, 1
A14B_LORA_PARAMS = 2 * 40 * 8 * 64 * (5120 + 5120)  # experts x blocks x (q,k,v,o x 2 attn) x r x (in + out)


def _recipe() -> Any:
    import msgspec

    from unirl_stream.recipe import Recipe

    raw = {"run": {"name": "bench", "total_steps": 1}, "data": {"prompts": "p.txt"},
           "model": {"path": "tiny:two_expert", "max_sequence_length": 8, "options": {"decode_batch": 8},
                     "lora": {"rank": 4, "alpha": 8.0, "experts": ["high", "low"]}},
           "sampling": {"height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 8,
                        "samples_per_prompt": BATCH, "sde": {"fraction": [0.0, 0.7]}}}
    return msgspec.convert(raw, Recipe)


def _rank(rank: int, world: int, board: str, out: str) -> None:
    import json

    import torch

    from unirl_stream.algorithms.config import AlgorithmConfig
    from unirl_stream.algorithms.losses import GRPO
    from unirl_stream.algorithms.parallel import DataParallel, join
    from unirl_stream.algorithms.train import make_optimizer, train_on_batch
    from unirl_stream.api import Prompt
    from unirl_stream.models.wan22 import Wan22Policy

    torch.set_num_threads(1)
    b = Path(board)
    dp = (join(rank, world, post=b.write_text, read=lambda: b.read_text() if b.exists() else None,
               backend="gloo", timeout_s=300, host="127.0.0.1") if world > 1 else DataParallel.single())
    policy = Wan22Policy.from_recipe(_recipe(), device="cpu")
    cfg = AlgorithmConfig(micro_batch=2, updates_per_batch=2, clip_range=0.2, lr=1e-3)
    opt = make_optimizer(policy, cfg)
    prompts = [Prompt(f"b:{k}", f"prompt {k}") for k in range(BATCH)]
    batch = policy.rollout(prompts, list(range(BATCH)))
    batch["advantage"] = torch.linspace(-1, 1, BATCH)
    mine = dp.shard(BATCH)
    times = []
    for step in range(WARMUP + STEPS):
        dp.sum([0.0])  # line the ranks up before timing
        t0 = time.perf_counter()
        train_on_batch(policy, GRPO(cfg), opt, prompts[mine.start:mine.stop], batch[mine.start:mine.stop], cfg, dp=dp)
        if step >= WARMUP:
            times.append(time.perf_counter() - t0)
    if dp.leader:
        Path(out).write_text(json.dumps(times))
    dp.close()


def throughput(rows: Rows, tmp: Path) -> None:
    import json

    import torch.multiprocessing as mp

    per_step = {}
    for world in (1, 2):
        out = tmp / f"times{world}.json"
        mp.start_processes(_rank, args=(world, str(tmp / f"board{world}"), str(out)), nprocs=world,
                           start_method="spawn")
        t = min(json.loads(out.read_text()))
        per_step[world] = t
        cfg = {"model": "tiny two_expert Wan2.2, LoRA r4", "batch": BATCH, "sde_steps": 6, "updates": 2,
               "ranks": world, "threads_per_rank": 1, "backend": "gloo", "cores": os.cpu_count(),
               "load_avg_1m": round(os.getloadavg()[0], 2)}
        rows.add(cfg, "seconds_per_optimizer_step", t, "s")
        rows.add(cfg, "samples_per_s", BATCH / t, "samples/s")
        print(f"N={world}: {t:.3f} s per step, {BATCH / t:.2f} samples/s")
    ratio = per_step[1] / per_step[2]
    rows.add({"cores": os.cpu_count(), "threads_per_rank": 1, "load_avg_1m": round(os.getloadavg()[0], 2),
              "note": "ranks share the machine's cores with whatever else runs"}, "throughput_ratio_n2_over_n1",
             ratio, "x")
    print(f"throughput N=2 / N=1: {ratio:.2f}x on {os.cpu_count()} shared cores")


class _Producer:
    def __init__(self, ctl: Any) -> None:
        from unirl_stream.pipeline.control import CoordinatorWeights

        self.weights = CoordinatorWeights(ctl)

    def load(self, held: int) -> tuple[float, float, int]:
        """(seconds to receive, seconds to deserialize, tensors) of the first version > held."""
        from safetensors.torch import load

        t0 = time.time()
        while (got := self.weights.poll(held)) is None:
            time.sleep(0.001)
        t1 = time.time()
        tensors = load(got.blob)
        return t1 - t0, time.time() - t1, len(tensors)


def publish(rows: Rows, repeats: int, tmp: Path) -> None:
    import ray
    import torch
    from safetensors.torch import save

    from unirl_stream.pipeline.control import ControlClient, CoordinatorWeights
    from unirl_stream.pipeline.coordinator import Coordinator

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    coord = ray.remote(Coordinator).options(num_cpus=0, max_concurrency=8).remote(
        str(tmp / "run"), ["p:0"], 0, False, 1, 1, 1, 1)
    ctl = ControlClient(coord)
    producer = ray.remote(_Producer).options(num_cpus=0).remote(ctl)
    # 0.42 B parameters in tensors of a real adapter's shapes (A: r x 5120, B: 5120 x r)
    n_pairs = A14B_LORA_PARAMS // (2 * 64 * 5120)
    state = {f"lora.{i}.{ab}": torch.randn((64, 5120) if ab == "A" else (5120, 64)).to(torch.bfloat16)
             for i in range(n_pairs) for ab in ("A", "B")}
    best: dict[str, float] = {}
    for version in range(repeats):
        t0 = time.time()
        blob = save(state)
        t1 = time.time()
        ref = producer.load.remote(version - 1)
        CoordinatorWeights(ctl).publish(version, blob)
        t2 = time.time()
        recv, decode, n = ray.get(ref)
        t3 = time.time()
        for k, v in {"export_s": t1 - t0, "publish_s": t2 - t1, "receive_s": recv, "decode_s": decode,
                     "publish_to_loaded_s": t3 - t1}.items():
            best[k] = min(best.get(k, float("inf")), v)
        del blob
    cfg = {"adapter": "Wan2.2-A14B LoRA r64, both experts", "params": A14B_LORA_PARAMS,
           "bytes": 2 * A14B_LORA_PARAMS, "path": "Ray object store via the coordinator", "nodes": 1,
           "repeats": repeats, "tensors": 2 * n_pairs}
    for k, v in best.items():
        rows.add(cfg, k, v, "s")
    print("publish at the A14B adapter size (0.84 GB): " + ", ".join(f"{k} {v:.2f} s" for k, v in best.items()))
    ray.shutdown()


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["throughput", "publish", "all"], default="all")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "trainer_group.jsonl"))
    args = ap.parse_args()
    rows = Rows("trainer_group", args.out)
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("throughput", "all"):
            throughput(rows, Path(tmp))
        if args.part in ("publish", "all"):
            publish(rows, args.repeats, Path(tmp))


if __name__ == "__main__":
    main()

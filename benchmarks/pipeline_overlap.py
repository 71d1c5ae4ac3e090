"""Pipeline overlap: async vs sync on stages of calibrated cost, in one invocation.

Each configuration runs the real pipeline (Ray actors, memory store) with the synthetic
policy and reward, whose per-sample costs are sleeps (they hold no CPU, so three stages
can overlap on a 2-core machine). From the run directory we measure, over a steady-state
window (the second trained step to the last):

- throughput: trained samples / s;
- each stage's work per sample c_s = busy seconds in the window (from the recorded spans,
  summed over workers) / samples trained in the window;
- overlap bound = min_s workers_s / c_s (no pipeline can beat its slowest stage);
- ideal async/sync speedup = sum_s (c_s / workers_s) / max_s (c_s / workers_s);
- driver/pipeline overhead per sample = 1 / throughput - 1 / bound (zero-cost stages).

Usage: python benchmarks/pipeline_overlap.py [--quick] [--out benchmarks/results/pipeline_overlap.jsonl]
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

from unirl_stream.recipe import decode  # noqa: E402


def recipe(tmp: Path, name: str, mode: str, eta: int, costs: dict[str, float], workers: dict[str, int],
           steps: int, model: str = "synthetic") -> Any:
    prompts = tmp / "prompts.txt"
    prompts.write_text("\n".join(f"a prompt {i}" for i in range(32)) + "\n")
    if model == "synthetic":
        m = {"name": "synthetic", "path": "synthetic",
             "options": {"dim": 8, "steps": 3, "rollout_s": costs["rollout"], "train_s": costs["train"] / 2}}
        sampling: dict[str, Any] = {"samples_per_prompt": 4}
    else:
        m = {"name": "wan22", "path": "tiny:two_expert", "device": "cpu",
             "lora": {"rank": 4, "alpha": 8.0}}
        sampling = {"samples_per_prompt": 4, "height": 32, "width": 32, "num_frames": 5,
                    "num_inference_steps": 6, "guidance_scale": 1.0, "sde": {"fraction": [0.0, 1.0]}}
    raw = {
        "run": {"name": name, "seed": 0, "total_steps": steps, "output_dir": str(tmp)},
        "model": m, "data": {"prompts": str(prompts)}, "sampling": sampling,
        # one update per batch: the trainer's cost is proximal + one replay (2 x train_s / 2)
        "algorithm": {"updates_per_batch": 1, "lr": 0.01, "clip_range": 0.2},
        "reward": [{"name": "synthetic", "options": {"cost_s": costs["reward"]}}],
        "store": {"backend": "memory"},
        "pipeline": {"backend": "ray", "mode": mode, "max_staleness": 0 if mode == "sync" else eta,
                     "rollout_workers": workers["rollout"], "reward_workers": workers["reward"],
                     "groups_per_step": 2, "rollout_batch": 4, "reward_batch": 4, "tick_s": 0.5},
        "logging": {"live": False},
    }
    return decode(raw, name)


def measure(run_dir: Path, workers: dict[str, int]) -> dict[str, Any]:
    ledger = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines() if x.strip()]
    trained = sorted((r for r in ledger if r["status"] == "trained"), key=lambda r: r["t"])
    by_version: dict[int, float] = {}
    for r in trained:
        by_version[r["trained_at_version"]] = r["t"]
    ends = [by_version[v] for v in sorted(by_version)]
    t_a, t_b = ends[0], ends[-1]  # window: after the first step ... the last step
    n = sum(1 for r in trained if t_a < r["t"] <= t_b)
    busy: dict[str, float] = {}
    for f in (run_dir / "spans").glob("*.jsonl"):
        for line in f.read_text().splitlines():
            s = json.loads(line)
            busy[s["stage"]] = busy.get(s["stage"], 0.0) + max(0.0, min(s["t1"], t_b) - max(s["t0"], t_a))
    per_sample = {k: v / n for k, v in busy.items()}
    w = {"rollout": workers["rollout"], "reward": workers["reward"], "trainer": 1}
    bound = min(w[k] / c for k, c in per_sample.items() if c > 0)
    loads = [per_sample[k] / w[k] for k in per_sample]
    staleness = [r["staleness"] for r in trained]
    hist = {str(s): staleness.count(s) for s in sorted(set(staleness))}
    return {"throughput": n / (t_b - t_a), "bound": bound, "per_sample": per_sample,
            "ideal_speedup": sum(loads) / max(loads), "staleness_hist": hist,
            "dropped": sum(1 for r in ledger if r["status"] == "dropped" and r["reason"].startswith("stale")),
            "samples": len(trained)}


def run_one(tmp: Path, rows: Rows, cfg: dict[str, Any]) -> dict[str, Any]:
    from unirl_stream.pipeline.driver import run

    name = f"{cfg['workload']}-{cfg['mode']}-eta{cfg['eta']}"
    r = recipe(tmp, name, cfg["mode"], cfg["eta"], cfg["costs"], cfg["workers"], cfg["steps"], cfg["model"])
    t0 = time.time()
    run_dir = run(r, run_dir=tmp / name, live=False)
    m = measure(run_dir, cfg["workers"])
    m["wall_s"] = time.time() - t0
    rows.add(cfg, "throughput", m["throughput"], "samples/s")
    rows.add(cfg, "overlap_bound", m["bound"], "samples/s")
    rows.add(cfg, "throughput_over_bound", m["throughput"] / m["bound"], "ratio")
    rows.add(cfg, "ideal_async_sync_speedup", m["ideal_speedup"], "ratio")
    rows.add(cfg, "staleness_hist", 0.0, json.dumps(m["staleness_hist"]))
    rows.add(cfg, "stale_drops", m["dropped"], "samples")
    for stage, c in m["per_sample"].items():
        rows.add(cfg, f"work_per_sample/{stage}", c, "s")
    print(f"{name:32s} {m['throughput']:7.2f} samples/s  bound {m['bound']:7.2f}  "
          f"ratio {m['throughput'] / m['bound']:.2f}  staleness {m['staleness_hist']}", flush=True)
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/pipeline_overlap.jsonl")
    ap.add_argument("--quick", action="store_true", help="balanced workload at eta=1 only")
    ap.add_argument("--tiny-wan", action="store_true", help="also run the tiny Wan2.2 model (real compute)")
    ap.add_argument("--only-tiny-wan", action="store_true", help="just the tiny Wan2.2 comparison")
    args = ap.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    rows = Rows("pipeline_overlap", args.out)
    balanced = {"rollout": 0.06, "reward": 0.06, "train": 0.06}
    workloads = {"balanced": (balanced, {"rollout": 1, "reward": 1}),
                 "rollout_heavy": ({"rollout": 0.12, "reward": 0.03, "train": 0.06}, {"rollout": 2, "reward": 1}),
                 "zero_cost": ({"rollout": 0.0, "reward": 0.0, "train": 0.0}, {"rollout": 1, "reward": 1})}
    etas = [2] if args.quick else [0, 1, 2, 4]
    headline: dict[int, tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for wname, (costs, workers) in workloads.items():
            if args.only_tiny_wan or (args.quick and wname != "balanced"):
                continue
            base = {"workload": wname, "costs": costs, "workers": workers, "steps": 12, "model": "synthetic"}
            if wname == "zero_cost":
                a = run_one(Path(tmp), rows, {**base, "eta": 2, "mode": "async"})
                rows.add(base, "pipeline_overhead_per_sample", 1 / a["throughput"] - 1 / a["bound"], "s")
                continue
            s = run_one(Path(tmp), rows, {**base, "mode": "sync", "eta": 0})
            for eta in etas:
                a = run_one(Path(tmp), rows, {**base, "mode": "async", "eta": eta})
                speedup = a["throughput"] / s["throughput"]
                rows.add({**base, "eta": eta}, "async_over_sync", speedup, "ratio")
                rows.add({**base, "eta": eta}, "async_over_sync_vs_ideal", speedup / a["ideal_speedup"], "ratio")
                if wname == "balanced":
                    headline[eta] = (a["throughput"] / a["bound"], speedup, a["ideal_speedup"])
        if args.tiny_wan or args.only_tiny_wan:
            costs = {"rollout": 0.0, "reward": 0.0, "train": 0.0}
            base = {"workload": "tiny_wan22", "costs": costs, "workers": {"rollout": 1, "reward": 1},
                    "eta": 2, "steps": 6, "model": "wan22"}
            a = run_one(Path(tmp), rows, {**base, "mode": "async"})
            s = run_one(Path(tmp), rows, {**base, "mode": "sync", "eta": 0})
            rows.add(base, "async_over_sync", a["throughput"] / s["throughput"], "ratio")
            print(f"tiny Wan2.2 (real compute on {__import__('os').cpu_count()} cores): async/sync = "
                  f"{a['throughput'] / s['throughput']:.2f}")
    ray.shutdown()
    for eta, (eff, speedup, ideal) in sorted(headline.items()):
        print(f"balanced eta={eta}: async/bound = {eff:.2f}, async/sync = {speedup:.2f} "
              f"(ideal {ideal:.2f}, {speedup / ideal:.2f} of ideal)")


if __name__ == "__main__":
    main()

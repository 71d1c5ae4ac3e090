"""Where replay's time over the bare pair goes: ``gpu_wan22.py --profile`` (one layout).

torch.profiler over ``k`` bare pairs and one replayed sample (``k`` SDE steps, ``grpo``):
wall time, the device's busy time (kernels and copies, summed) and the kernels whose summed
time differs most. Busy time equal but wall time longer: the device waited for the host
(synchronisations, launches); busy time longer: work the pair does not do.
"""

from __future__ import annotations

import time
from typing import Any


def _device_us(avg: Any) -> float:
    return float(getattr(avg, "self_device_time_total", getattr(avg, "self_cuda_time_total", 0.0)))


def _profiled(clock: Any, fn: Any) -> tuple[float, dict[str, float], int]:
    from torch.profiler import ProfilerActivity, profile

    clock.sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if clock.cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        fn()
        clock.sync()
        wall = time.perf_counter() - t0
    per = {a.key: _device_us(a) for a in prof.key_averages() if _device_us(a) > 0}
    syncs = sum(a.count for a in prof.key_averages() if "Synchronize" in a.key or a.key == "cudaMemcpy")
    return wall, per, syncs


def phase_profile(ctx: Any, trainer: Any, td: Any) -> None:
    import torch
    from gpu_wan22_phases import _prompt
    from gpu_wan22_replay import bare_pair

    from unirl_stream.algorithms.losses import GRPO
    from unirl_stream.algorithms.train import train_on_batch

    alg, k = trainer.recipe.algorithm, int(td["sde_steps"].shape[1])
    opt = torch.optim.SGD(list(trainer.trainable_parameters()), lr=0.0)
    pair = bare_pair(trainer)
    pair()
    w_pair, d_pair, s_pair = _profiled(ctx.clock, lambda: [pair() for _ in range(k)])
    w_rep, d_rep, s_rep = _profiled(ctx.clock, lambda: train_on_batch(trainer, GRPO(alg), opt, [_prompt()], td, alg))
    busy_pair, busy_rep = sum(d_pair.values()) / 1e6, sum(d_rep.values()) / 1e6
    c = {**ctx.cfg, "sde_steps": k, "profiled": True}
    diff = sorted(((d_rep.get(n, 0.0) - d_pair.get(n, 0.0)) / 1e3, n) for n in set(d_pair) | set(d_rep))
    top = [(round(ms, 2), n[:90]) for ms, n in diff[::-1][:10]] + [(round(ms, 2), n[:90]) for ms, n in diff[:3]]
    for metric, v in [("profile_pair_wall_s", w_pair), ("profile_pair_busy_s", busy_pair),
                      ("profile_replay_wall_s", w_rep), ("profile_replay_busy_s", busy_rep),
                      ("profile_pair_syncs", float(s_pair)), ("profile_replay_syncs", float(s_rep))]:
        ctx.rows.add({**c, "top_kernel_diff_ms": top} if metric == "profile_replay_busy_s" else c, metric, v,
                     "count" if "syncs" in metric else "s")
    print(f"[{ctx.cfg['layout']} profile] {k} pairs: wall {w_pair:.2f}s busy {busy_pair:.2f}s syncs {s_pair}; "
          f"replay: wall {w_rep:.2f}s busy {busy_rep:.2f}s syncs {s_rep}", flush=True)
    for ms, n in top:
        print(f"    {ms:+9.2f} ms  {n}", flush=True)

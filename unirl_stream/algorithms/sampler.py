"""The SDE sampler and its exact replay, independent of any particular model.

The model enters as a ``VelocityFn``: ``velocity(expert, x, t, rows) -> v`` returns the
guided velocity (classifier-free guidance already applied, fp32) of expert ``expert`` for
latents ``x`` [n, C, T, H, W] (fp32) at per-row timesteps ``t`` [n] (fp32); ``rows`` [n] are
the rows of the batch whose conditioning (prompt embeddings) applies. The Wan2.2 policy
builds one per batch; tests can plug in anything.

Rollout runs every step of the pinned schedule, routing step i to an expert by its timestep,
takes an SDE step where the sample's selection says so (ODE elsewhere), and keeps only what
replay needs: the latents at the scored steps' endpoints (fp32: exactly what the kernel and
the model saw), the step indices, the expert of each scored step and the log-probs.

Replay gathers, for every (sample, scored step), the stored input and output latents, runs the
recorded expert at the recorded timestep, and scores the stored output under the kernel's
Gaussian with the current weights. Same code path for the kernel and the log-density as at
rollout, so with unchanged weights the log-probs agree to float rounding of the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unirl_stream.algorithms.kernels import gaussian_log_prob, ode_step, sde_step
from unirl_stream.algorithms.noise import gaussian
from unirl_stream.algorithms.schedule import route, timestep_grid
from unirl_stream.algorithms.selection import latent_positions

if TYPE_CHECKING:  # pragma: no cover
    import torch

VelocityFn = Callable[[int, "torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class SamplerSpec:
    kernel: str  # one of kernels.KERNELS
    eta: float
    boundary_ratio: float | None
    num_experts: int


@dataclass
class RolloutTensors:
    """Batched rollout output; ``final`` is the last latent (decoded by the policy)."""

    final: torch.Tensor  # [B, C, T, H, W] fp32
    latents: torch.Tensor  # [B, M, C, T, H, W] fp32
    latent_steps: torch.Tensor  # [B, M] int64, sorted; latents[b, m] is x at step latent_steps[b, m]
    sde_steps: torch.Tensor  # [B, K] int64, sorted
    experts: torch.Tensor  # [B, K] int64
    log_probs: torch.Tensor  # [B, K] fp32
    sigmas: torch.Tensor  # [B, N + 1] fp32
    timesteps: torch.Tensor  # [B, N] fp32


def sample(
    velocity: VelocityFn,
    spec: SamplerSpec,
    seeds: Sequence[int],
    steps: Sequence[Sequence[int]],
    slots: int,
    latent_shape: Sequence[int],
    sigmas: Sequence[float],
    device: torch.device | str = "cpu",
    keep: Sequence[tuple[int, ...]] | None = None,
) -> RolloutTensors:
    """Sample one trajectory per seed; ``steps[b]`` are sample b's SDE steps (sorted, K each,
    possibly none: an ODE rollout); ``keep[b]``: more positions whose latent sample b stores
    (N = the clean latent; an ODE rollout's gradient-window start)."""
    import torch

    B, N, K = len(seeds), len(sigmas) - 1, len(steps[0])
    if any(len(s) != K for s in steps):
        raise ValueError("every sample of a batch must score the same number of steps")
    host_ts = timestep_grid(sigmas)
    sig = _to(torch.tensor(list(sigmas), dtype=torch.float32), device)
    ts = _to(torch.tensor(host_ts, dtype=torch.float32), device)
    positions = [latent_positions(list(s), slots, tuple(keep[b]) if keep else ()) for b, s in enumerate(steps)]
    plan = _step_plan(steps, N, device)
    store = torch.empty(B, slots, *latent_shape, dtype=torch.float32, device=device)
    log_probs = torch.zeros(B, K, dtype=torch.float32, device=device)
    experts = torch.zeros(B, K, dtype=torch.int64, device=device)
    rows = _to(torch.arange(B), device)
    x = gaussian(seeds, latent_shape, "init", device=device)
    # Nothing in this loop waits for the device: routing, row and column indices come from
    # host values, and noise reaches the device by asynchronous copies, so the host queues
    # step i + 1 while the device still runs step i.
    for i in range(N + 1):
        for b, pos in enumerate(positions):
            for m, p in enumerate(pos):
                if p == i:
                    store[b, m] = x[b]
        if i == N:
            break
        e = route(host_ts[i], spec.boundary_ratio, spec.num_experts)
        v = velocity(e, x, ts[i].expand(B), rows)
        s_i, s_n, s_max = sig[i].expand(B), sig[i + 1].expand(B), sig[min(1, N)].expand(B)
        nxt = ode_step(x, v, s_i, s_n)
        if i in plan:
            sde_rows, idx, cols = plan[i]
            mean, std = sde_step(spec.kernel, x[idx], v[idx], s_i[idx], s_n[idx], s_max[idx], spec.eta)
            eps = gaussian([seeds[b] for b in sde_rows], latent_shape, "step", i, device=device)
            y = mean + std * eps
            nxt[idx] = y
            log_probs[idx, cols] = gaussian_log_prob(y, mean, std)
            experts[idx, cols] = e
        x = nxt
    return RolloutTensors(
        final=x,
        latents=store,
        latent_steps=torch.tensor(positions, dtype=torch.int64, device=device),
        sde_steps=torch.tensor([list(s) for s in steps], dtype=torch.int64, device=device),
        experts=experts,
        log_probs=log_probs,
        sigmas=sig.expand(B, -1).clone(),
        timesteps=ts.expand(B, -1).clone(),
    )


def _to(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on ``device`` without waiting for the device (an asynchronous copy).

    To CUDA through pinned memory: from pageable memory the driver may stage the copy by
    waiting for the stream (everything queued before it), which would stall the host once per
    replayed step; torch's pinned allocator keeps the staging block alive until the copy ran."""
    import torch

    if t.device.type == "cpu" and torch.device(device).type == "cuda" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _step_plan(steps: Sequence[Sequence[int]], num_steps: int,
               device: torch.device | str) -> dict[int, tuple[list[int], torch.Tensor, torch.Tensor]]:
    """For each SDE step i: (the rows that take it, those rows and their columns on device)."""
    import torch

    plan = {}
    for i in range(num_steps):
        sde_rows = [b for b, s in enumerate(steps) if i in s]
        if sde_rows:
            cols = [list(steps[b]).index(i) for b in sde_rows]
            plan[i] = (sde_rows, _to(torch.tensor(sde_rows), device), _to(torch.tensor(cols), device))
    return plan


def replay(
    velocity: VelocityFn,
    spec: SamplerSpec,
    batch: Mapping[str, torch.Tensor],
    columns: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    with_means: bool = False,
) -> Any:
    """Log-probs [B, len(columns)] of the recorded transitions under ``velocity`` (autograd on
    if the caller's grad mode is). ``columns`` picks scored steps (default: all K).
    ``with_means``: also the transitions' Gaussian means [B, len(columns), *latent] (Flow-DPPO's
    trust region is on them), as a pair (log-probs, means).

    ``batch`` stays where it is (the host, as the store returns it): the index arithmetic runs
    there, and only the latents and schedule values this call scores go to ``device`` (default:
    the batch's), by asynchronous copies, so replay never waits for the device."""
    import torch

    latents, lsteps = batch["latents"], batch["latent_steps"]
    steps, experts = batch["sde_steps"], batch["experts"]
    sig, ts = batch["sigmas"], batch["timesteps"]
    dev = latents.device if device is None else torch.device(device)
    B, K = steps.shape
    cols = list(range(K)) if columns is None else list(columns)
    b = torch.arange(B, device=steps.device).repeat_interleave(len(cols))
    j = torch.tensor(cols, dtype=torch.int64).to(steps.device).repeat(B)
    s = steps[b, j]
    slot_in = torch.searchsorted(lsteps[b].contiguous(), s[:, None]).squeeze(1)
    slot_out = torch.searchsorted(lsteps[b].contiguous(), (s + 1)[:, None]).squeeze(1)
    _check_slots(lsteps, b, s, slot_in, slot_out)
    e = experts[b, j]
    out = torch.zeros(b.numel(), dtype=torch.float32, device=dev)
    means = torch.zeros(b.numel(), *latents.shape[2:], dtype=torch.float32, device=dev) if with_means else None
    for ex in sorted(set(e.tolist())):
        sel = (e == ex).nonzero().squeeze(1)
        bs, ss, si, so = b[sel], s[sel], slot_in[sel], slot_out[sel]
        x, y = _to(latents[bs, si], dev), _to(latents[bs, so], dev)
        s_i, s_n, s_1 = _to(sig[bs, ss], dev), _to(sig[bs, ss + 1], dev), _to(sig[bs, 1], dev)
        v = velocity(ex, x, _to(ts[bs, ss], dev), _to(bs, dev))
        mean, std = sde_step(spec.kernel, x, v, s_i, s_n, s_1, spec.eta)
        out = out.index_put((_to(sel, dev),), gaussian_log_prob(y, mean, std))
        if means is not None:
            means = means.index_put((_to(sel, dev),), mean)
    logp = out.view(B, len(cols))
    return logp if means is None else (logp, means.view(B, len(cols), *latents.shape[2:]))


def _check_slots(lsteps: torch.Tensor, b: torch.Tensor, s: torch.Tensor,
                 slot_in: torch.Tensor, slot_out: torch.Tensor) -> None:
    M = lsteps.shape[1]
    ok_in = (slot_in < M) & (lsteps[b, slot_in.clamp(max=M - 1)] == s)
    ok_out = (slot_out < M) & (lsteps[b, slot_out.clamp(max=M - 1)] == s + 1)
    if not bool((ok_in & ok_out).all()):
        bad = int((~(ok_in & ok_out)).nonzero()[0, 0])
        raise ValueError(
            f"trajectory row {int(b[bad])} lacks the latents of its scored step {int(s[bad])} "
            f"(latent_steps {lsteps[b[bad]].tolist()}): the record is corrupt or truncated"
        )

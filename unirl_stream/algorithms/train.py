"""One trainer step on a batch of trajectories: N clipped updates with micro-batching.

``train_on_batch`` is what the pipeline's trainer stage (and the reference loop) call:

1. what the objective ``needs``, and nothing else: proximal log-probs (current weights, no
   grad) and/or reference log-probs (adapters disabled), once for the whole batch — fixed
   for all updates (``grpo`` reads neither unless ``kl_coef > 0``);
2. ``updates_per_batch`` optimizer steps; each accumulates gradients over micro-batches of
   ``micro_batch`` samples and, when the policy supports it, over one scored step at a time
   (the loss is a mean over (sample, step) terms, so each chunk's loss is weighted by its
   share of the terms: the summed gradient equals the full-batch gradient, while only one
   step's activations are alive at a time, as DanceGRPO does);
3. gradient clipping to ``max_grad_norm`` before each optimizer step. Versions are the
   caller's: the trainer stage counts them (one per ``publish_every`` steps), the reference
   loop one per batch.

Data parallel (``dp``, a ``parallel.DataParallel``): ``batch`` is this rank's shard. Terms
are weighted by their share of the *global* batch and gradients summed over ranks before
clipping, so N ranks take the step one rank takes on the whole batch; the returned stats
are global too.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from unirl_stream.algorithms.config import AlgorithmConfig
from unirl_stream.algorithms.parallel import DataParallel, full_tensor
from unirl_stream.api import Policy, Prompt
from unirl_stream.training import LossStats, Objective, StepMeans

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from tensordict import TensorDict


def _accepts_columns(policy: Policy) -> bool:
    try:
        return "columns" in inspect.signature(policy.logprobs).parameters
    except (TypeError, ValueError):
        return False


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def batch_logprobs(policy: Policy, prompts: Sequence[Prompt], batch: TensorDict,
                   micro_batch: int, ref: bool = False, with_means: bool = False) -> Any:
    """Log-probs [B, K] of the whole batch without gradients, micro-batch by micro-batch;
    ``with_means``: (log-probs, the steps' means [B, K, *latent]), the proximal pass of
    objectives with a trust region on the means."""
    import torch

    fn = policy.ref_logprobs if ref else policy.logprobs
    kw = {"with_means": True} if with_means else {}
    lps, means = [], []
    with torch.no_grad():
        for rows in _chunks(len(prompts), micro_batch):
            out = fn([prompts[i] for i in rows], batch[rows], **kw)
            lp, mu = out if with_means else (out, None)
            lps.append(lp.detach().float())
            means.append(mu)
    # an empty shard (data parallel, fewer samples than ranks) has no rows
    lp = torch.cat(lps) if lps else batch["log_probs"][:0].float()
    if not with_means:
        return lp
    if not lps:
        lat = batch["latents"]
        return lp, lat.new_zeros((0, batch["log_probs"].shape[1], *lat.shape[2:]))
    return lp, torch.cat(means)


def step_sigmas(batch: TensorDict, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_i, sigma_{i+1}) [B, K] of every scored step, on ``dev``."""
    steps = batch["sde_steps"]
    sig = batch["sigmas"]
    return sig.gather(1, steps).to(dev), sig.gather(1, steps + 1).to(dev)


_SUMMED = ("loss", "clip_frac", "approx_kl", "ratio_mean", "kl_ref")


def _part(x: torch.Tensor | None, rows: torch.Tensor, cols: list[int]) -> torch.Tensor | None:
    return None if x is None else x[rows][:, cols]


def _merge(parts: list[tuple[float, LossStats]], grad_norm: float, dp: DataParallel) -> LossStats:
    """Weighted means over every rank's terms (weights are global shares: they sum to 1)."""
    sums = dp.sum([sum(w * getattr(s, name) for w, s in parts) for name in _SUMMED])
    hi, neg_lo = dp.max([max((s.ratio_max for _, s in parts), default=-math.inf),
                         max((-s.ratio_min for _, s in parts), default=-math.inf)])
    return LossStats(**dict(zip(_SUMMED, sums, strict=True)), ratio_max=hi, ratio_min=-neg_lo,
                     grad_norm=grad_norm)


def train_on_batch(
    policy: Policy,
    objective: Objective,
    optimizer: Any,
    prompts: Sequence[Prompt],
    batch: TensorDict,
    cfg: AlgorithmConfig,
    *,
    per_step: bool = True,
    dp: DataParallel | None = None,
) -> list[LossStats]:
    """Run ``cfg.updates_per_batch`` updates on ``batch`` (fields: the policy's replay fields,
    ``log_probs`` = behaviour [B, K], ``advantage`` [B]). Returns one LossStats per update."""
    import torch

    dp = dp or DataParallel.single()
    if "advantage" not in batch.keys():
        raise ValueError("train_on_batch: the batch has no 'advantage' field")
    B, K = batch["log_probs"].shape
    if len(prompts) != B:
        raise ValueError(f"train_on_batch: {len(prompts)} prompts for {B} trajectories")
    total = int(dp.sum([float(B)])[0])  # the global batch: every rank weighs by it
    params = [p for p in policy.trainable_parameters() if p.requires_grad]
    # The batch lives on the host: each replay call moves only the latents it scores, by
    # asynchronous copies (``sampler.replay``); nothing here waits for the device but the
    # per-chunk loss check.
    dev = params[0].device
    behavior = batch["log_probs"].float().to(dev)
    adv = batch["advantage"].float().flatten().to(dev)
    needs = objective.needs
    proximal, old_means = _proximal(policy, prompts, batch, cfg.micro_batch, needs)
    ref = batch_logprobs(policy, prompts, batch, cfg.micro_batch, ref=True) if "ref" in needs else None
    sigmas = step_sigmas(batch, dev) if old_means is not None else None
    col_chunks = [[j] for j in range(K)] if per_step and _accepts_columns(policy) else [list(range(K))]
    history = []
    for update in range(cfg.updates_per_batch):
        optimizer.zero_grad(set_to_none=True)
        parts: list[tuple[float, LossStats]] = []
        for rows in _chunks(B, cfg.micro_batch):
            mb_prompts, mb, r = [prompts[i] for i in rows], batch[rows], torch.tensor(rows).to(dev, non_blocking=True)
            for cols in col_chunks:
                kw: dict[str, Any] = {"columns": cols} if len(col_chunks) > 1 else {}
                means = None
                if old_means is None or sigmas is None:
                    new = policy.logprobs(mb_prompts, mb, **kw)
                else:
                    new, new_means = policy.logprobs(mb_prompts, mb, with_means=True, **kw)  # type: ignore[call-arg]
                    means = StepMeans(new_means, _part(old_means, r, cols), _part(sigmas[0], r, cols),
                                      _part(sigmas[1], r, cols))
                loss, stats = objective(new, behavior[r][:, cols], _part(proximal, r, cols),
                                        adv[r], _part(ref, r, cols), means=means)
                if not math.isfinite(stats.loss):
                    raise RuntimeError(f"non-finite loss {stats.loss} at update {update} (rows {rows})")
                w = len(rows) * len(cols) / (total * K)
                (loss * (w * dp.grad_scale)).backward()
                parts.append((w, stats))
        grad_norm = apply_gradients(params, optimizer, cfg.max_grad_norm, dp)
        history.append(_merge(parts, grad_norm, dp))
    return history


def apply_gradients(params: list[Any], optimizer: Any, max_grad_norm: float, dp: DataParallel) -> float:
    """The accumulated gradients summed over ranks, clipped to ``max_grad_norm``, one optimizer
    step; returns the gradient norm before clipping (every algorithm's update ends here)."""
    import torch

    dp.sum_gradients(params)
    grad_norm = float(full_tensor(torch.nn.utils.clip_grad_norm_(params, max_grad_norm)))
    optimizer.step()
    return grad_norm


def _proximal(policy: Policy, prompts: Sequence[Prompt], batch: TensorDict, micro_batch: int,
              needs: frozenset[str]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The proximal pass, if the objective reads it: (log-probs, means or None)."""
    if "proximal_means" in needs:
        return batch_logprobs(policy, prompts, batch, micro_batch, with_means=True)
    if "proximal" in needs:
        return batch_logprobs(policy, prompts, batch, micro_batch), None
    return None, None


def make_optimizer(policy: Policy, cfg: AlgorithmConfig) -> Any:
    """AdamW over the policy's trainable parameters with the recipe's settings."""
    import torch

    params = [p for p in policy.trainable_parameters() if p.requires_grad]
    if not params:
        raise ValueError("the policy has no trainable parameters (is LoRA enabled?)")
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)

"""DiffusionNFT (Zheng et al. 2025, arXiv 2509.16117): policy optimisation on the forward process.

Rollouts are deterministic ODE samples with the *old* adapter, an EMA of the trained one; a
sample carries only its clean latent x_0 (no SDE log-probs). For advantage A, c = adv_clip_max:

    r    = clamp(clamp(A, -c, c) / c / 2 + 1/2, 0, 1)            (how good the sample is, in [0, 1])
    x_t  = (1 - t) x_0 + t eps                                     (the forward process at time t)
    v+   = beta v_new + (1 - beta) v_old,   v- = (1 + beta) v_old - beta v_new
    x0^± = x_t - t v^±,   w^± = stopgrad(mean_d |x0^± - x_0|).clamp(min=1e-5)
    l^±  = mean_d (x0^± - x_0)^2 / w^±
    L_t  = c * mean_b [ r l+ / beta + (1 - r) l- / beta ]

v_new is the trained adapter's velocity (autograd), v_old the EMA adapter's (no grad), both
conditional only (NFT is CFG-free). The implicit positive policy v+ is pulled towards good
samples, the implicit negative one v- towards bad ones; both share the trained weights.
Each update draws K = int(N * time_fraction) training times shared by the batch
(``time_mode = "all"``: the rollout's first K sigmas, shuffled; ``"random"``: uniform in
(0, time_fraction]) and back-propagates every L_t scaled by 1/K before one optimizer step.
After each optimizer step the EMA moves: shadow <- d shadow + (1 - d) live, with d from the
schedule at the number n of optimizer steps taken before it: ``constant`` d = ema_decay;
``linear`` d = min(n uprate, uphold); ``warmup`` d = 0 for n < flat_steps, then
min((n - flat_steps) uprate, uphold).

The trainer publishes the EMA adapter (what producers sample with), keeps both in its
checkpoints, and computes v_old by swapping the EMA tensors into the adapters' parameters
(pointer swaps, no copies). Terms are fp32; the models run in their dtype.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta

from unirl_stream.algorithms.base import AlgorithmBase
from unirl_stream.algorithms.noise import derive_seed, gaussian
from unirl_stream.algorithms.parallel import DataParallel
from unirl_stream.algorithms.train import apply_gradients
from unirl_stream.training import LossStats, RolloutSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from tensordict import TensorDict

    from unirl_stream.api import Policy, Prompt


class NFTConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    beta: Annotated[float, Meta(gt=0)] = 1.0
    """How far the implicit policies sit from the old one (the paper's beta)."""
    adv_clip_max: Annotated[float, Meta(gt=0)] = 5.0
    """c: advantages are clipped to [-c, c] before they become r in [0, 1]."""
    time_mode: Literal["all", "random"] = "all"
    time_fraction: Annotated[float, Meta(gt=0, le=1)] = 0.99
    ema: Literal["constant", "linear", "warmup"] = "warmup"
    ema_decay: Annotated[float, Meta(ge=0, le=1)] = 0.9
    """``constant``: d."""
    ema_uprate: Annotated[float, Meta(ge=0)] = 0.001
    ema_uphold: Annotated[float, Meta(ge=0, le=1)] = 0.5
    ema_flat_steps: Annotated[int, Meta(ge=0)] = 0


def ema_decay(cfg: NFTConfig, n: int) -> float:
    """The EMA decay d after optimizer step ``n`` (0-based), per the schedule."""
    if cfg.ema == "constant":
        return cfg.ema_decay
    if cfg.ema == "linear":
        return min(n * cfg.ema_uprate, cfg.ema_uphold)
    return 0.0 if n < cfg.ema_flat_steps else min((n - cfg.ema_flat_steps) * cfg.ema_uprate, cfg.ema_uphold)


def nft_terms(x0: torch.Tensor, x_t: torch.Tensor, t: float, v_new: torch.Tensor, v_old: torch.Tensor,
              r: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-sample NFT loss [n] (before the c * mean): r l+ / beta + (1 - r) l- / beta."""
    v_old = v_old.detach()
    dims = tuple(range(1, x0.ndim))
    out = []
    for v in (beta * v_new + (1 - beta) * v_old, (1 + beta) * v_old - beta * v_new):
        err = x_t - t * v - x0
        w = err.detach().abs().mean(dim=dims, keepdim=True).clamp(min=1e-5)
        out.append((err**2 / w).mean(dim=dims))
    return (r * out[0] + (1 - r) * out[1]) / beta


class NFT(AlgorithmBase):
    Config = NFTConfig
    supports_fsdp = False  # the EMA swap replaces whole parameters

    def __init__(self, cfg: Any, recipe: Any = None) -> None:
        super().__init__(cfg, recipe)
        self.options: NFTConfig = self.options or NFTConfig()
        self.shadow: list[torch.Tensor] | None = None
        self.updates = 0  # optimizer steps taken: the EMA schedule's clock

    def rollout(self, sampling: Any) -> RolloutSpec:
        return RolloutSpec(kind="ode")

    # ------------------------------------------------------------------ the EMA adapter
    def _params(self, policy: Policy) -> list[torch.Tensor]:
        return [p for p in policy.trainable_parameters() if p.requires_grad]

    def _ensure_shadow(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.shadow is None:
            self.shadow = [p.detach().clone() for p in params]
        elif self.shadow and self.shadow[0].device != params[0].device:  # loaded from a checkpoint
            self.shadow = [s.to(p.device, p.dtype) for s, p in zip(self.shadow, params, strict=True)]
        return self.shadow

    @contextmanager
    def _old(self, policy: Policy) -> Iterator[None]:
        """The EMA tensors in the adapters' parameters (pointer swaps, undone after)."""
        params = self._params(policy)
        shadow = self._ensure_shadow(params)
        for i, p in enumerate(params):
            shadow[i], p.data = p.data, shadow[i]
        try:
            yield
        finally:
            for i, p in enumerate(params):
                shadow[i], p.data = p.data, shadow[i]

    def publish(self, policy: Policy) -> bytes:
        with self._old(policy):
            return policy.export_weights()

    def state(self) -> bytes:
        import torch
        from safetensors.torch import save

        tensors = {f"ema.{i}": s.detach().cpu().contiguous() for i, s in enumerate(self.shadow or [])}
        return save({**tensors, "updates": torch.tensor([self.updates], dtype=torch.int64)})

    def load_state(self, blob: bytes) -> None:
        from safetensors.torch import load

        got = load(blob)
        self.updates = int(got.pop("updates")[0])
        self.shadow = [got[f"ema.{i}"] for i in range(len(got))]  # moved to the params' device on use

    # ------------------------------------------------------------------ training
    def _times(self, sigmas: Sequence[float]) -> list[float]:
        """This update's training times, shared by the batch (and by every rank)."""
        o = self.options
        k = max(1, int((len(sigmas) - 1) * o.time_fraction))
        rng = random.Random(derive_seed("nft_times", self.updates))
        if o.time_mode == "random":
            return [o.time_fraction * (1.0 - rng.random()) for _ in range(k)]  # (0, fraction]
        times = list(sigmas[:k])
        rng.shuffle(times)
        return times

    def train_batch(self, policy: Policy, optimizer: Any, prompts: Sequence[Prompt], batch: TensorDict,
                    dp: Any = None, per_step: bool = True) -> list[LossStats]:
        import torch

        dp = dp or DataParallel.single()
        params = self._params(policy)
        shadow = self._ensure_shadow(params)
        total = int(dp.sum([float(batch.batch_size[0])])[0])
        history = []
        for _ in range(self.cfg.updates_per_batch):
            optimizer.zero_grad(set_to_none=True)
            loss = self._accumulate(policy, prompts, batch, total, dp)
            grad_norm = apply_gradients(params, optimizer, self.cfg.max_grad_norm, dp)
            with torch.no_grad():
                torch._foreach_lerp_(shadow, [p.detach() for p in params], 1.0 - ema_decay(self.options, self.updates))
            self.updates += 1
            history.append(LossStats(loss=dp.sum([loss])[0], grad_norm=grad_norm))
        return history

    def _accumulate(self, policy: Policy, prompts: Sequence[Prompt], batch: TensorDict, total: int,
                    dp: DataParallel) -> float:
        """Back-propagate every training time's loss over micro-batches; returns this rank's
        share of the (1/K-averaged) loss."""
        import torch

        B = batch.batch_size[0]
        times = self._times(batch["sigmas"][0].tolist()) if B else self._times([1.0, 0.0])
        c, beta = self.options.adv_clip_max, self.options.beta
        dev = policy_device(policy)
        loss_sum = 0.0
        for k, t in enumerate(times):
            for start in range(0, B, self.cfg.micro_batch):
                rows = list(range(start, min(start + self.cfg.micro_batch, B)))
                mb = batch[rows]
                x0 = mb["latents"][:, 0].float().to(dev)
                adv = mb["advantage"].float().flatten().to(dev)
                r = (adv.clamp(-c, c) / c / 2 + 0.5).clamp(0, 1)
                eps = gaussian(mb["seed"].tolist(), x0.shape[1:], f"nft{self.updates}", k, device=dev)
                x_t = (1 - t) * x0 + t * eps
                ts = torch.full((len(rows),), t * 1000.0)
                p_rows = [prompts[i] for i in rows]
                with torch.no_grad(), self._old(policy):
                    v_old = policy.velocity(p_rows, x_t, ts)
                v_new = policy.velocity(p_rows, x_t, ts)
                per = nft_terms(x0, x_t, t, v_new, v_old, r, beta)
                part = c * per.sum() / (total * len(times))
                if not torch.isfinite(part):
                    raise RuntimeError(f"non-finite NFT loss at time {t} (rows {rows})")
                (part * dp.grad_scale).backward()
                loss_sum += float(part.detach())
        return loss_sum


def policy_device(policy: Policy) -> torch.device:
    return next(iter(policy.trainable_parameters())).device

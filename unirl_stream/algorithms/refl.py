"""Reward-feedback learning, streaming: ReFL (Xu et al. 2023) and DRaFT-K (Clark et al. 2023).

Producers run a deterministic ODE rollout with the live adapter and store, besides the media,
the latent at the start of the sample's gradient window (``window`` rollouts). The trainer
re-runs the window with gradient through the trained adapters, decodes through the VAE with
gradient and back-propagates a differentiable reward R (the recipe's [[reward]] list, weighted,
every scorer differentiable: rewards/differentiable.py):

``draft_k``  the window is the last K steps (``steps``): x_{N-K} -> ... -> x_N by the same Euler
             ODE steps and guidance as sampling, each step under activation checkpointing, then
             frames = decode(x_N). Gradients flow through all K steps (DRaFT-K).
``refl``     the window is one step i drawn per sample from ``late`` (a fraction of the
             steps, seeded by the sample): x0 = x_i - sigma_i v(x_i, t_i), frames = decode(x0)
             (ReFL's one-step x0 prediction at a random late timestep).

    L = -reward_scale * mean_b R(frames_b, prompt_b)

Departures: ReFL's paper adds the pre-training loss as a regulariser and DRaFT's LV variant
re-noises; neither is here (a KL to the reference is the usual guard in RL fine-tuning and
can be added by the caller's recipe through lr / steps). The media the reward stage scores are
the producer's, so the logged reward is the behaviour policy's; the gradient's reward is the
trainer's re-run at its current weights (the two agree at staleness 0, up to numerics).
Terms are fp32; the models run in their dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta

from unirl_stream.algorithms.base import AlgorithmBase
from unirl_stream.algorithms.parallel import DataParallel
from unirl_stream.algorithms.selection import fraction_steps
from unirl_stream.algorithms.train import apply_gradients
from unirl_stream.training import LossStats, RolloutSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from tensordict import TensorDict

    from unirl_stream.api import Policy, Prompt

RewardFn = Any  # (frames float [B, F, H, W, 3] on the uint8 scale, prompts) -> Tensor [B] with grad


class ReFLConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    mode: Literal["refl", "draft_k"] = "draft_k"
    steps: Annotated[int, Meta(ge=1)] = 1
    """``draft_k``: K, the last steps run with gradient."""
    late: tuple[Annotated[float, Meta(ge=0, le=1)], Annotated[float, Meta(ge=0, le=1)]] = (0.7, 1.0)
    """``refl``: the one step is drawn among steps i with lo <= i / N < hi."""
    reward_scale: Annotated[float, Meta(gt=0)] = 1.0
    checkpoint_steps: bool = True
    """``draft_k``: activation checkpointing per ODE step (memory of one step)."""


class ReFL(AlgorithmBase):
    Config = ReFLConfig

    def __init__(self, cfg: Any, recipe: Any = None) -> None:
        super().__init__(cfg, recipe)
        self.options: ReFLConfig = self.options or ReFLConfig()
        self._reward: RewardFn | None = None

    def rollout(self, sampling: Any) -> RolloutSpec:
        n, o = sampling.num_inference_steps, self.options
        if o.mode == "draft_k":
            if o.steps > n:
                raise ValueError(f"algorithm.options.steps: {o.steps} > sampling.num_inference_steps ({n})")
            return RolloutSpec(kind="window", window=(n - o.steps, n - o.steps + 1))
        steps = fraction_steps(n, *o.late)
        return RolloutSpec(kind="window", window=(steps[0], steps[-1] + 1))

    def reward(self) -> RewardFn:
        """The recipe's differentiable reward, built on first use (producers never need it)."""
        if self._reward is None:
            from unirl_stream.rewards.differentiable import build

            if self.recipe is None:
                raise ValueError("refl: built without its recipe, so it has no reward")
            self._reward = build(self.recipe)
        return self._reward

    def train_batch(self, policy: Policy, optimizer: Any, prompts: Sequence[Prompt], batch: TensorDict,
                    dp: Any = None, per_step: bool = True) -> list[LossStats]:
        import torch

        dp = dp or DataParallel.single()
        params = [p for p in policy.trainable_parameters() if p.requires_grad]
        total = int(dp.sum([float(batch.batch_size[0])])[0])
        history = []
        for _ in range(self.cfg.updates_per_batch):
            optimizer.zero_grad(set_to_none=True)
            reward_sum = 0.0
            B = batch.batch_size[0]
            for start in range(0, B, self.cfg.micro_batch):
                rows = list(range(start, min(start + self.cfg.micro_batch, B)))
                r = self.reward()(policy.decode_frames(self._window(policy, [prompts[i] for i in rows], batch[rows])),
                                  [prompts[i] for i in rows])
                loss = -self.options.reward_scale * r.float().sum() / total
                if not torch.isfinite(loss):
                    raise RuntimeError(f"non-finite reward-feedback loss (rows {rows})")
                (loss * dp.grad_scale).backward()
                reward_sum += float(r.detach().sum())
            grad_norm = apply_gradients(params, optimizer, self.cfg.max_grad_norm, dp)
            mean_reward = dp.sum([reward_sum])[0] / max(total, 1)
            history.append(LossStats(loss=-self.options.reward_scale * mean_reward, grad_norm=grad_norm))
        return history

    def _window(self, policy: Any, prompts: list[Prompt], mb: TensorDict) -> torch.Tensor:
        """The clean latent at the end of the gradient window, with autograd on the adapters."""
        import torch
        from torch.utils.checkpoint import checkpoint

        dev = next(iter(policy.trainable_parameters())).device
        x = mb["latents"][:, 0].float().to(dev)
        first = mb["latent_steps"][:, 0]
        sig, ts = mb["sigmas"], mb["timesteps"]
        rows = torch.arange(len(prompts))
        if self.options.mode == "refl":
            v = policy.velocity(prompts, x, ts[rows, first], guided=True)
            return x - sig[rows, first].to(dev).view(-1, *[1] * (x.ndim - 1)) * v
        for j in range(self.options.steps):
            i = first + j
            dt = (sig[rows, i + 1] - sig[rows, i]).to(dev).view(-1, *[1] * (x.ndim - 1))
            t = ts[rows, i]

            def step(z: torch.Tensor, t: torch.Tensor = t, dt: torch.Tensor = dt) -> torch.Tensor:
                return z + dt * policy.velocity(prompts, z, t, guided=True)

            x = checkpoint(step, x, use_reentrant=False) if self.options.checkpoint_steps else step(x)
        return x

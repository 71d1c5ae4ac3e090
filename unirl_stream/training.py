"""Contracts of algorithm plugins (entry point group ``unirl_stream.algorithms``).

An algorithm decides two things: what a sample must carry (``rollout``: producers sample
accordingly and the store's fields follow) and how a batch of such samples updates the
trainable weights (``train_batch``). It is built as ``cls(recipe.algorithm, recipe)`` in the
trainer, the reference loop and the validator; its own options are ``[algorithm.options]``,
decoded by its ``Config`` Struct.

Three rollouts exist (``RolloutKind``):

``sde``     SDE steps with their per-step log-probs and the latents at their endpoints
            (the GRPO family: Flow-GRPO, DanceGRPO, MixGRPO, Flow-DPPO);
``ode``     a deterministic rollout keeping only its clean latent (DiffusionNFT);
``window``  a deterministic rollout that also keeps the latent at the start of a gradient
            window (ReFL, DRaFT-K): the trainer re-runs the window with gradient.

Every rollout also writes ``media`` (what the reward stage scores). Like ``api.py`` this module
imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from tensordict import TensorDict

    from unirl_stream.api import Policy, Prompt

RolloutKind = Literal["sde", "ode", "window"]


class RolloutSpec(msgspec.Struct, frozen=True):
    """What producers sample for an algorithm."""

    kind: RolloutKind = "sde"
    window: tuple[int, int] = (0, 0)
    """``window`` only: the gradient window's first step is drawn per sample, from its seed,
    in [lo, hi) of the ``num_inference_steps`` steps (hi = lo + 1 fixes it)."""


class LossStats(msgspec.Struct):
    loss: float
    clip_frac: float = 0.0
    approx_kl: float = 0.0
    ratio_mean: float = 1.0
    ratio_max: float = 1.0
    ratio_min: float = 1.0
    kl_ref: float = 0.0
    grad_norm: float = 0.0


ObjectiveInput = Literal["proximal", "ref", "proximal_means"]


class StepMeans(msgspec.Struct, frozen=True):
    """Per-step Gaussian means of the scored transitions, for trust regions on the means
    (Flow-DPPO): ``new`` [n, k, ...] with autograd, ``old`` the proximal replay's (no grad),
    ``sigma``/``sigma_next`` [n, k] the steps' schedule values."""

    new: Any
    old: Any
    sigma: Any
    sigma_next: Any


class Objective(Protocol):
    """Per-step policy loss on replayed log-probs (the ``sde`` family's algorithms).

    ``new``, ``behavior`` and ``proximal`` log-probs are [B, K]; ``advantages`` [B];
    ``ref`` (optional) [B, K]. ``proximal`` is the trainer's log-prob before this batch's
    first update (fixed for all updates of the batch); ``behavior`` is what the producer
    recorded. Returns the scalar loss (autograd) and detached stats.

    ``needs`` declares which of the extra no-grad replays the objective reads: the trainer
    computes only those (each is a full pass over the batch's SDE steps) and passes None for
    the others; ``proximal_means`` adds the proximal pass's step means (``means``).
    """

    needs: frozenset[ObjectiveInput]

    def __call__(
        self,
        new: torch.Tensor,
        behavior: torch.Tensor,
        proximal: torch.Tensor | None,
        advantages: torch.Tensor,
        ref: torch.Tensor | None = None,
        means: StepMeans | None = None,
    ) -> tuple[torch.Tensor, LossStats]: ...


class Algorithm(Protocol):
    """What the trainer stage needs from an algorithm plugin."""

    def rollout(self, sampling: Any) -> RolloutSpec:
        """The rollout producers must sample (``sampling``: the recipe's [sampling])."""
        ...

    def train_batch(self, policy: Policy, optimizer: Any, prompts: Sequence[Prompt],
                    batch: TensorDict, dp: Any = None, per_step: bool = True) -> list[LossStats]:
        """The update(s) of one batch (this rank's shard under data parallel, ``dp``);
        one LossStats per optimizer step. ``per_step``: accumulate gradients one scored step
        at a time where the algorithm can (less memory, the same gradient)."""
        ...

    def publish(self, policy: Policy) -> bytes:
        """The weights producers sample with (the trained ones, or e.g. NFT's EMA)."""
        ...

    def state(self) -> bytes:
        """Algorithm state a checkpoint keeps besides weights and optimizer (b'' = none)."""
        ...

    def load_state(self, blob: bytes) -> None: ...


class FlowModel(Protocol):
    """What ``nft`` and ``refl`` need of a policy besides ``api.Policy`` (every
    ``models.flow.FlowPolicy`` has it)."""

    def velocity(self, prompts: Sequence[Prompt], x: torch.Tensor, timesteps: torch.Tensor,
                 guided: bool = False) -> torch.Tensor:
        """fp32 velocity of latents ``x`` [B, ...] at per-row model timesteps [B] (host),
        with autograd on the adapters in the caller's grad mode; ``guided``: with CFG."""
        ...

    def decode_frames(self, latents: torch.Tensor) -> torch.Tensor:
        """Float frames [B, F, H, W, 3] on the uint8 scale, with autograd (straight-through
        rounding: the same values as the uint8 media)."""
        ...

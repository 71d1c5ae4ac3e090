"""Recipe sections ``[sampling]`` (with ``[sampling.sde]``) and ``[algorithm]``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

Fraction = Annotated[float, Meta(ge=0, le=1)]


class SDEConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    kernel: Literal["flow_sde", "dance_sde", "cps_sde"] = "flow_sde"
    """``flow_sde``: Flow-GRPO's SDE (noise scaled by sqrt(sigma/(1-sigma)));
    ``dance_sde``: DanceGRPO's constant-eta SDE; ``cps_sde``: coefficient-preserving sampling
    (each latent keeps noise share sigma; eta in (0, 1] sets the fresh noise's part,
    sin(eta pi / 2); never the last step). Non-SDE steps are deterministic ODE."""
    selection: Literal["fraction", "random_k", "mixgrpo_window", "none"] = "fraction"
    """Which denoising steps are stochastic (and trained); ``none``: a deterministic ODE
    rollout, for the algorithms that train without SDE log-probs (``nft``, ``refl``)."""
    fraction: tuple[Fraction, Fraction] = (0.0, 1.0)
    """Steps whose index / num_inference_steps falls in [lo, hi) (timestep fraction)."""
    k: Annotated[int, Meta(ge=1)] = 1
    """``random_k``: how many steps to draw within ``fraction`` (seeded per sample)."""
    window_size: Annotated[int, Meta(ge=1)] = 4
    """``mixgrpo_window``: consecutive SDE steps in the sliding window."""
    window_shift_every: Annotated[int, Meta(ge=1)] = 25
    """``mixgrpo_window``: optimizer steps before the window moves by ``window_stride``."""
    window_stride: Annotated[int, Meta(ge=1)] = 1
    window_progressive: bool = True
    """Move the window from high noise towards low noise as training proceeds."""


class SamplingConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    height: Annotated[int, Meta(ge=16, multiple_of=16)] = 480
    width: Annotated[int, Meta(ge=16, multiple_of=16)] = 832
    num_frames: Annotated[int, Meta(ge=1)] = 33
    """Frames per sample (1 for an image model); the model plugin checks what its VAE accepts
    (Wan: 4k + 1, its VAE compresses time by 4)."""
    num_inference_steps: Annotated[int, Meta(ge=1, le=1000)] = 20
    guidance_scale: Annotated[float, Meta(ge=0)] = 5.0
    """Classifier-free guidance for the high-noise expert (1.0 = no CFG, one forward)."""
    guidance_scale_2: Annotated[float, Meta(ge=0)] | None = None
    """CFG for the low-noise expert (default: ``guidance_scale``)."""
    shift: Annotated[float, Meta(ge=0.001, le=1000)] = 5.0
    """Flow-matching sigma shift of the pinned schedule (published recipes use 1-12; far
    outside [0.001, 1000] the schedule's sigmas collapse to 0 or 1 in float arithmetic)."""
    eta: Annotated[float, Meta(ge=0)] = 0.7
    """SDE noise level."""
    samples_per_prompt: Annotated[int, Meta(ge=1)] = 16
    """GRPO group size."""
    negative_prompt: str = ""
    sde: SDEConfig = msgspec.field(default_factory=SDEConfig)


class AlgorithmConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str = "grpo"
    """Algorithm plugin (entry point group ``unirl_stream.algorithms``): ``grpo``,
    ``decoupled_grpo`` (AReaL-style: for stale samples, and whenever producers and trainer
    differ in numerics, i.e. bf16 models whose ``model.lora.producer_dtype`` and
    ``trainer_dtype`` differ),
    ``flow_dppo``, ``nft`` (DiffusionNFT) or ``refl`` (ReFL / DRaFT-K); docs/algorithms.md."""
    options: dict[str, Any] = {}
    """The algorithm's own settings (its ``Config`` Struct; docs/algorithms.md lists them)."""
    lr: Annotated[float, Meta(gt=0)] = 3e-4
    weight_decay: Annotated[float, Meta(ge=0)] = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: Annotated[float, Meta(gt=0)] = 1.0
    clip_range: Annotated[float, Meta(gt=0)] = 1e-4
    updates_per_batch: Annotated[int, Meta(ge=1)] = 2
    """Optimizer steps on each batch; old (proximal) log-probs stay fixed across them."""
    kl_coef: Annotated[float, Meta(ge=0)] = 0.0
    """KL to the reference policy (LoRA disabled); 0 skips the reference forward."""
    adv_std: Literal["group", "global"] = "group"
    """z-score rewards by the group's std, or by a running std over all recent rewards."""
    adv_clip: Annotated[float, Meta(gt=0)] | None = 5.0
    behavior_weight_cap: Annotated[float, Meta(gt=0)] | None = 5.0
    """``decoupled_grpo``: cap on the proximal/behaviour importance weight."""
    micro_batch: Annotated[int, Meta(ge=1)] = 4
    """Samples per forward/backward (gradient accumulation over the batch)."""

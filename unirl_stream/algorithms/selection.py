"""Which denoising steps are stochastic (SDE, scored and trained); the rest are ODE steps.

Strategies (``[sampling.sde].selection``):

``fraction``        every step i with lo <= i/N < hi.
``random_k``        ``k`` distinct steps among those, drawn from the sample's seed (so the
                    draw is independent of batch composition and reproducible).
``none``            no SDE step: a deterministic ODE rollout (``nft``, ``refl``).
``mixgrpo_window``  MixGRPO's sliding window of ``window_size`` consecutive steps inside the
                    fraction. Progressive: the window starts at the fraction's first step and
                    moves ``window_stride`` steps later (towards low noise) every
                    ``window_shift_every`` policy versions, then stays at the last position.
                    Not progressive: the window's start is drawn from the sample's seed.

The producer calls ``select_steps`` with the policy version it holds and records the result
on the trajectory; replay reads the recorded steps and never calls this again.

Departure from MixGRPO: when the window reaches the end of its range MixGRPO lets it shrink
(its end is clipped at the right boundary); we keep the size fixed and stop moving, because
every trajectory of a run must have the same number of scored steps K to batch them.
"""

from __future__ import annotations

import random

from unirl_stream.algorithms.config import SDEConfig
from unirl_stream.algorithms.noise import derive_seed


def fraction_steps(num_steps: int, lo: float, hi: float) -> list[int]:
    steps = [i for i in range(num_steps) if lo <= i / num_steps < hi]
    if not steps:
        raise ValueError(
            f"sampling.sde.fraction [{lo}, {hi}) selects no step of {num_steps}; widen it "
            f"(step i is selected when lo <= i/{num_steps} < hi)"
        )
    return steps


def num_sde_steps(cfg: SDEConfig, num_steps: int) -> int:
    """K: how many steps every trajectory scores (fixed for a run)."""
    if cfg.selection == "none":
        return 0
    candidates = fraction_steps(num_steps, *cfg.fraction)
    if cfg.selection == "fraction":
        return len(candidates)
    k = cfg.k if cfg.selection == "random_k" else cfg.window_size
    if k > len(candidates):
        what = "k" if cfg.selection == "random_k" else "window_size"
        raise ValueError(
            f"sampling.sde.{what} = {k} exceeds the {len(candidates)} steps in fraction "
            f"{list(cfg.fraction)} of {num_steps} steps"
        )
    return k


def latent_slots(cfg: SDEConfig, num_steps: int) -> int:
    """How many latents a trajectory stores: replay of step i needs x_i and x_{i+1}.

    Contiguous selections share endpoints (K + 1 latents); ``random_k`` steps may all be
    apart, so it reserves 2K slots (unused ones repeat the last latent position)."""
    if cfg.selection == "none":
        return 1  # the one latent an ODE rollout keeps (its clean latent, or its window start)
    k = num_sde_steps(cfg, num_steps)
    return 2 * k if cfg.selection == "random_k" else k + 1


def select_steps(cfg: SDEConfig, num_steps: int, seed: int, version: int) -> list[int]:
    """The sorted SDE step indices of one sample."""
    if cfg.selection == "none":
        return []
    candidates = fraction_steps(num_steps, *cfg.fraction)
    k = num_sde_steps(cfg, num_steps)
    if cfg.selection == "fraction":
        return candidates
    if cfg.selection == "random_k":
        rng = random.Random(derive_seed(seed, "random_k"))
        return sorted(rng.sample(candidates, k))
    last_start = len(candidates) - k
    if cfg.window_progressive:
        start = min((max(version, 0) // cfg.window_shift_every) * cfg.window_stride, last_start)
    else:
        start = random.Random(derive_seed(seed, "window")).randint(0, last_start)
    return candidates[start : start + k]


def latent_positions(steps: list[int], slots: int, keep: tuple[int, ...] = ()) -> list[int]:
    """Sorted step positions whose input latent is stored (position N = final latent):
    the scored steps' endpoints and ``keep``, padded to ``slots`` by repeating the last one."""
    pos = sorted(set(steps) | {s + 1 for s in steps} | set(keep))
    if len(pos) > slots:
        raise ValueError(f"steps {steps} need {len(pos)} latent slots, only {slots} reserved")
    return pos + [pos[-1]] * (slots - len(pos))


def window_start(window: tuple[int, int], seed: int) -> int:
    """The first step of a sample's gradient window, drawn in [lo, hi) from its seed."""
    lo, hi = window
    return random.Random(derive_seed(seed, "grad_window")).randrange(lo, hi)


def reachable_steps(cfg: SDEConfig, num_steps: int) -> list[int]:
    """Every step that some sample of the run may score (all strategies draw inside the
    fraction; a progressive MixGRPO window visits all of it unless training stops early)."""
    if cfg.selection == "none":
        return []
    return fraction_steps(num_steps, *cfg.fraction)

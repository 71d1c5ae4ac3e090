"""Recipe checks every flow-matching plugin shares (no torch: the validator runs them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from unirl_stream.algorithms.selection import num_sde_steps
from unirl_stream.api import UserInputError

if TYPE_CHECKING:  # pragma: no cover
    from unirl_stream.recipe import Recipe


def check_frames(num_frames: int, temporal: int | None, family: str) -> None:
    """Image models (``temporal`` None) take exactly one frame; video VAEs need tk+1."""
    if temporal is None:
        if num_frames != 1:
            raise UserInputError(
                f"sampling.num_frames: {family} generates images, expected 1, got {num_frames}; "
                f"set sampling.num_frames = 1"
            )
    elif (num_frames - 1) % temporal:
        raise UserInputError(
            f"sampling.num_frames: expected {temporal}k+1 ({family}'s VAE compresses time by "
            f"{temporal}), got {num_frames}; try {((num_frames - 1) // temporal) * temporal + 1}"
        )


def check_geometry(height: int, width: int, spatial: int, patch: tuple[int, int]) -> None:
    """Pixel sizes must be multiples of the VAE's spatial factor times the patch size."""
    mh, mw = spatial * patch[0], spatial * patch[1]
    for field, value, mult in (("height", height, mh), ("width", width, mw)):
        if value % mult:
            raise UserInputError(
                f"sampling.{field}: {height}x{width} (height x width) must be multiples of "
                f"{mh}x{mw} for this model (VAE x{spatial}, patch {patch[0]}x{patch[1]}); "
                f"try {max(mult, value // mult * mult)}"
            )


def check_common(recipe: Recipe, family: str) -> None:
    """What every flow plugin requires: LoRA on, SDE steps selected, eta > 0."""
    m, s = recipe.model, recipe.sampling
    if not m.lora.enabled:
        raise UserInputError(f"model.lora.enabled = false: {family} trains LoRA adapters only")
    try:
        num_sde_steps(s.sde, s.num_inference_steps)
    except ValueError as e:
        raise UserInputError(str(e)) from None
    if s.eta <= 0 and s.sde.selection != "none":
        raise UserInputError(f"sampling.eta: must be > 0 for SDE steps, got {s.eta}")

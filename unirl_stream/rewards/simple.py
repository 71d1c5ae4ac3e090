"""Brightness: mean pixel value in [0, 1]. A model-free reward for tests and smoke runs
(differentiable too: a model-free reward for reward-feedback learning's smoke runs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar

from msgspec import Meta

from unirl_stream.api import Prompt
from unirl_stream.rewards.base import DifferentiableFrameScorer, FrameOptions

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from unirl_stream.rewards.clip_common import Rounding


class BrightnessConfig(FrameOptions, kw_only=True, forbid_unknown_fields=True):
    batch_size: Annotated[int, Meta(ge=1)] = 64


class Brightness(DifferentiableFrameScorer):
    """Mean of all pixel values of a frame divided by 255."""

    name: ClassVar[str] = "brightness"
    Config: ClassVar[type[BrightnessConfig]] = BrightnessConfig

    def score_frames(
        self, frames: torch.Tensor, prompts: list[Prompt], rounding: Rounding = "uint8"
    ) -> torch.Tensor:
        import torch

        # float64 sum: exact for any realistic frame size, so the score does not depend
        # on how the batch was split (float32 reductions do).
        return frames.to(torch.float64).mean(dim=(2, 3, 4)) / 255.0

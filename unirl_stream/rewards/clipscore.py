"""CLIPScore (Hessel et al. 2021): ``w * max(cos(image, text), 0)`` with ``w = 2.5``.

The paper uses CLIP ViT-B/32 and prepends "A photo depicts" to the candidate text; both
are defaults here (``prefix = ""`` scores the bare prompt). Loaded through transformers'
``CLIPModel``; model and processor come from the same repo unless ``processor`` is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from msgspec import Meta

from unirl_stream.api import Prompt
from unirl_stream.rewards.base import FrameOptions
from unirl_stream.rewards.pickscore import ClipPairScorer

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from unirl_stream.rewards.clip_common import Rounding


class CLIPScoreConfig(FrameOptions, kw_only=True, forbid_unknown_fields=True):
    model: str = "openai/clip-vit-base-patch32"
    processor: str = ""
    """Defaults to ``model``."""
    weight: Annotated[float, Meta(gt=0)] = 2.5
    """The paper's w (rescales the usual cosine range to about [0, 1])."""
    prefix: str = "A photo depicts "
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    def __post_init__(self) -> None:
        if not self.processor:
            self.processor = self.model


class CLIPScore(ClipPairScorer):
    name: ClassVar[str] = "clipscore"
    Config: ClassVar[type[CLIPScoreConfig]] = CLIPScoreConfig

    def texts(self, prompts: list[Prompt]) -> list[str]:
        return [self.config.prefix + p.text for p in prompts]  # type: ignore[attr-defined]

    def score_frames(
        self, frames: torch.Tensor, prompts: list[Prompt], rounding: Rounding = "uint8"
    ) -> torch.Tensor:
        w = self.config.weight  # type: ignore[attr-defined]
        # The clamp passes no gradient where the cosine is negative (the paper's formula).
        return w * self.cosine(frames, prompts, rounding).clamp(min=0.0)

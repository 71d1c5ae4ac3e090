"""PickScore (Kirstain et al. 2023) and its per-frame video form.

Reference scoring (the PickScore_v1 model card): the CLIP-H processor of
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` prepares image and text, the CLIP model
``yuvalkirstain/PickScore_v1`` embeds both, and the score is
``logit_scale.exp() * cos(image, text)`` (about 20-23 for typical images). The card
compares one prompt against several images with a softmax; RL uses the raw score per
(image, prompt) pair, as DanceGRPO / FlowGRPO do.

VideoPickScore scores frames with PickScore and aggregates them (default: 8 evenly spaced
frames, mean), also reporting the per-frame min/max/std as logged terms. Both are
differentiable (``score_tensor``, for reward-feedback learning).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from msgspec import Meta

from unirl_stream.api import Prompt
from unirl_stream.rewards.base import DifferentiableFrameScorer, FrameOptions, resolve_device

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from unirl_stream.rewards.clip_common import Rounding

CLIP_H = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
Dtype = Literal["float32", "bfloat16", "float16"]


class PickScoreConfig(FrameOptions, kw_only=True, forbid_unknown_fields=True):
    model: str = "yuvalkirstain/PickScore_v1"
    """CLIP model: hub id (local HF cache) or local folder."""
    processor: str = CLIP_H
    """CLIP processor (tokenizer + image preprocessing): hub id or local folder."""
    dtype: Dtype = "float32"


class VideoPickScoreConfig(PickScoreConfig, kw_only=True, forbid_unknown_fields=True):
    sample_frames: Annotated[int, Meta(ge=0)] = 8
    batch_size: Annotated[int, Meta(ge=1)] = 4


class ClipPairScorer(DifferentiableFrameScorer):
    """A CLIP model scoring (frame, prompt text) pairs; subclasses pick the formula."""

    model_field: ClassVar[str] = "model"
    processor_field: ClassVar[str] = "processor"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        from unirl_stream.rewards.clip_common import (
            ImageGeometry,
            load_clip_model,
            load_clip_processor,
        )

        cfg = self.config
        self.device = resolve_device(cfg.device)
        proc = load_clip_processor(getattr(cfg, self.processor_field), self.name, self.processor_field)
        self.tokenizer = proc.tokenizer
        self.geometry = ImageGeometry.from_processor(proc.image_processor)
        self.model = load_clip_model(
            getattr(cfg, self.model_field), self.name, self.model_field, self.device, cfg.dtype
        )

    def texts(self, prompts: list[Prompt]) -> list[str]:
        return [p.text for p in prompts]

    def cosine(self, frames: torch.Tensor, prompts: list[Prompt], rounding: Rounding) -> torch.Tensor:
        from unirl_stream.rewards.clip_common import frame_text_cosine

        return frame_text_cosine(
            self.model, self.tokenizer, self.geometry, frames, self.texts(prompts), self.device, rounding
        )


class PickScore(ClipPairScorer):
    name: ClassVar[str] = "pickscore"
    Config: ClassVar[type[PickScoreConfig]] = PickScoreConfig

    def score_frames(
        self, frames: torch.Tensor, prompts: list[Prompt], rounding: Rounding = "uint8"
    ) -> torch.Tensor:
        return self.model.logit_scale.exp().float() * self.cosine(frames, prompts, rounding)


class VideoPickScore(PickScore):
    name: ClassVar[str] = "video_pickscore"
    Config: ClassVar[type[VideoPickScoreConfig]] = VideoPickScoreConfig
    video_terms: ClassVar[bool] = True

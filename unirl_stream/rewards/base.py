"""What every built-in scorer shares: frame selection/aggregation, media checks, devices.

A scorer sees ``media`` as uint8 ``[B, F, H, W, 3]`` (images are ``F = 1``). Per-frame
scorers (CLIP-family, OCR, JPEG, brightness) score the frames picked by ``sample_frames``
and reduce them with ``aggregate``; both are options of every such scorer, so a video
recipe chooses e.g. ``aggregate = "min"`` (worst frame) or ``sample_frames = 4``.
``DifferentiableFrameScorer`` adds ``score_tensor`` (api.DifferentiableScorer): the same
frames, per-frame scores and aggregation, on float frames with autograd.

This module imports msgspec only: every scorer's ``Config`` inherits from ``FrameOptions``
and recipe validation must stay cheap. torch is imported inside functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from unirl_stream.api import Prompt, RewardError, ScoreBatch, UserInputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from unirl_stream.rewards.clip_common import Rounding

Aggregate = Literal["mean", "min", "max"]


class FrameOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Options shared by per-frame scorers (every built-in except ``remote``)."""

    aggregate: Aggregate = "mean"
    """How per-frame scores of a video become one score: mean, min (worst frame), max."""
    sample_frames: Annotated[int, Meta(ge=0)] = 0
    """Score this many frames, evenly spaced, first and last included (0: every frame)."""
    batch_size: Annotated[int, Meta(ge=1)] = 16
    """Samples per ``score`` call (the reward set splits larger batches)."""
    device: str = "auto"
    """torch device for model scorers: "auto" (cuda when available, else cpu), "cpu",
    "cuda", "cuda:1", ..."""


def frame_indices(num_frames: int, sample: int) -> list[int]:
    """Evenly spaced frame indices, first and last included; ``sample = 0`` gives all."""
    if sample <= 0 or sample >= num_frames:
        return list(range(num_frames))
    if sample == 1:
        return [num_frames // 2]  # one frame: the middle one is the most typical
    step = (num_frames - 1) / (sample - 1)
    return sorted({round(i * step) for i in range(sample)})


def check_media(media: Any, n_prompts: int, scorer: str, floating: bool = False) -> None:
    """Raise UserInputError unless ``media`` is uint8 [B, F, H, W, 3] (``floating``: a float
    dtype, what ``score_tensor`` takes) with B = len(prompts)."""
    import torch

    if not isinstance(media, torch.Tensor):
        raise UserInputError(f"reward {scorer}: media must be a torch.Tensor, got {type(media).__name__}")
    dtype_ok = media.is_floating_point() if floating else media.dtype == torch.uint8
    if not dtype_ok or media.dim() != 5 or media.shape[-1] != 3:
        want = "float [B, F, H, W, 3] on the uint8 scale [0, 255]" if floating else "uint8 [B, F, H, W, 3]"
        raise UserInputError(
            f"reward {scorer}: media must be {want} (images: F = 1), "
            f"got {str(media.dtype).removeprefix('torch.')} {list(media.shape)}"
        )
    if media.shape[0] != n_prompts:
        raise UserInputError(
            f"reward {scorer}: {media.shape[0]} media samples but {n_prompts} prompts"
        )
    if min(media.shape[1:4]) == 0:
        raise UserInputError(f"reward {scorer}: empty media {list(media.shape)}")


def aggregate(values: torch.Tensor, how: Aggregate) -> torch.Tensor:
    """[B, F] per-frame scores -> [B]."""
    if how == "mean":
        return values.mean(dim=1)
    if how == "min":
        return values.min(dim=1).values
    return values.max(dim=1).values


def resolve_device(spec: str) -> str:
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(spec)
    except (RuntimeError, ValueError) as e:
        raise UserInputError(f"device {spec!r} is not a torch device ({e}); use auto, cpu or cuda[:N]") from None
    return spec


def to_floats(values: torch.Tensor) -> list[float]:
    """A float tensor as Python floats (float64, exact for fp32 values)."""
    return [float(v) for v in values.detach().double().cpu().tolist()]


def is_bad(value: Any) -> bool:
    """NaN, inf, None or not a number at all."""
    if value is None or isinstance(value, bool):
        return True
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


class FrameScorer:
    """Base for per-frame scorers: subclasses implement ``score_frames``.

    ``score`` checks the media, picks frames, calls ``score_frames`` on ``[B, F', H, W, 3]``
    and aggregates its ``[B, F']`` result.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[FrameOptions]] = FrameOptions
    video_terms: ClassVar[bool] = False  # also report per-frame min/max/std as terms

    def __init__(self, config: FrameOptions | None = None) -> None:
        self.config = config if config is not None else type(self).Config()
        self.batch_size: int = self.config.batch_size
        self.device: str = "cpu"

    def score(self, media: torch.Tensor, prompts: Sequence[Prompt]) -> ScoreBatch:
        import torch

        frames, idx = self.pick_frames(media, prompts)
        with torch.inference_mode():
            per_frame = self.score_frames(frames, list(prompts)).double().cpu()
        if tuple(per_frame.shape) != (media.shape[0], len(idx)):
            raise RewardError(
                f"reward {self.name}: score_frames returned shape {list(per_frame.shape)}, "
                f"expected {[media.shape[0], len(idx)]}"
            )
        terms: dict[str, list[float]] = {}
        if self.video_terms and len(idx) > 1:
            terms = {
                "frame_min": to_floats(per_frame.min(dim=1).values),
                "frame_max": to_floats(per_frame.max(dim=1).values),
                "frame_std": to_floats(per_frame.std(dim=1)),
            }
        return ScoreBatch(scores=to_floats(aggregate(per_frame, self.config.aggregate)), terms=terms)

    def pick_frames(
        self, media: torch.Tensor, prompts: Sequence[Prompt], floating: bool = False
    ) -> tuple[torch.Tensor, list[int]]:
        """Check ``media``, return the frames ``sample_frames`` picks and their indices."""
        check_media(media, len(prompts), self.name, floating)
        idx = frame_indices(media.shape[1], self.config.sample_frames)
        return (media[:, idx] if len(idx) != media.shape[1] else media), idx

    def score_frames(self, frames: torch.Tensor, prompts: list[Prompt]) -> torch.Tensor:
        """uint8 [B, F, H, W, 3] -> float [B, F]."""
        raise NotImplementedError


class DifferentiableFrameScorer(FrameScorer):
    """A per-frame scorer whose ``score_frames`` is differentiable in float frames (its
    ``rounding`` is the preprocessing's, ``clip_common.Rounding``): adds ``score_tensor``."""

    def score_tensor(
        self, frames: torch.Tensor, prompts: Sequence[Prompt], *, rounding: Rounding = "straight_through"
    ) -> torch.Tensor:
        """float [B, F, H, W, 3] on the uint8 scale, with autograd -> [B] scores with
        gradient. ``rounding = "float"`` skips the uint8 rounding between the resize passes
        (a smooth function: what a finite-difference check can test)."""
        picked, _ = self.pick_frames(frames, prompts, floating=True)
        return aggregate(self.score_frames(picked, list(prompts), rounding=rounding), self.config.aggregate)

    def score_frames(
        self, frames: torch.Tensor, prompts: list[Prompt], rounding: Rounding = "uint8"
    ) -> torch.Tensor:
        """[B, F, H, W, 3] (uint8, or float on the uint8 scale) -> float [B, F]."""
        raise NotImplementedError

"""JPEG compressibility / incompressibility (DDPO, Black et al. 2023).

The reward is the size of the frame encoded as JPEG at quality 95, in kB (1 kB = 1000
bytes, as DDPO): incompressibility = +size, compressibility = -size. DDPO encodes with PIL;
so do we, so values match its published curves for the same images.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Annotated, ClassVar

from msgspec import Meta

from unirl_stream.api import Prompt
from unirl_stream.rewards.base import FrameOptions, FrameScorer

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


class JpegConfig(FrameOptions, kw_only=True, forbid_unknown_fields=True):
    quality: Annotated[int, Meta(ge=1, le=100)] = 95
    batch_size: Annotated[int, Meta(ge=1)] = 64


def jpeg_kb(frame_hwc_u8: object, quality: int) -> float:
    """Size in kB of one uint8 [H, W, 3] numpy frame saved as JPEG by PIL."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame_hwc_u8).save(buf, format="JPEG", quality=quality)  # type: ignore[arg-type]
    return buf.tell() / 1000.0


class _Jpeg(FrameScorer):
    Config: ClassVar[type[JpegConfig]] = JpegConfig
    sign: ClassVar[float] = 1.0

    def score_frames(self, frames: torch.Tensor, prompts: list[Prompt]) -> torch.Tensor:
        import torch

        arr = frames.cpu().contiguous().numpy()
        q = self.config.quality  # type: ignore[attr-defined]
        sizes = [[jpeg_kb(arr[b, f], q) for f in range(arr.shape[1])] for b in range(arr.shape[0])]
        return self.sign * torch.tensor(sizes, dtype=torch.float64)


class JpegIncompressibility(_Jpeg):
    """+JPEG size in kB: rewards detailed, noisy images."""

    name: ClassVar[str] = "jpeg_incompressibility"
    sign: ClassVar[float] = 1.0


class JpegCompressibility(_Jpeg):
    """-JPEG size in kB: rewards flat, simple images."""

    name: ClassVar[str] = "jpeg_compressibility"
    sign: ClassVar[float] = -1.0

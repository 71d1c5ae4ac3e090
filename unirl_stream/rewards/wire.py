"""Messages of the remote reward service (msgpack over HTTP; never pickle).

POST /score: body ``ScoreRequest`` (msgpack) -> 200 ``ScoreReply`` or 4xx/5xx ``ErrorReply``.
GET /health: ``Health`` as JSON (readable with curl).

Media travel as ``MediaBlob``: ``raw`` is the uint8 [B, F, H, W, 3] tensor's bytes in C
order with its shape (fast, no codec), ``png`` one PNG per frame in (sample, frame) order
(smaller on the network for flat images). Both are lossless, so the server scores exactly
the pixels the client holds.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Literal

import msgspec

from unirl_stream.api import Prompt, UserInputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

CONTENT_TYPE = "application/msgpack"


class MediaBlob(msgspec.Struct, frozen=True):
    shape: tuple[int, ...]
    """[B, F, H, W, 3]"""
    encoding: Literal["raw", "png"] = "raw"
    data: bytes = b""
    """raw: the uint8 pixels, C order."""
    frames: list[bytes] = []
    """png: B * F PNG files, sample-major."""


class ScoreRequest(msgspec.Struct, frozen=True):
    media: MediaBlob
    prompts: list[Prompt]


class ScoreReply(msgspec.Struct, frozen=True):
    scores: list[float | None]
    terms: dict[str, list[float]] = {}
    seconds: float = 0.0
    """Scoring time on the server (queue wait excluded)."""
    queue_s: float = 0.0
    """Time the request waited, admitted, for the scoring thread."""
    queue_depth: int = 0
    """Requests waiting for the scoring thread when this one joined, itself included (0: it
    went straight into the next batch); at most the server's ``max_queue``."""
    gpu_util: float | None = None
    """The scoring GPU's utilisation in percent after scoring; None on CPU or without NVML."""


class ErrorReply(msgspec.Struct, frozen=True):
    error: str
    kind: Literal["user", "reward", "internal"] = "internal"


class Health(msgspec.Struct, frozen=True):
    status: str
    reward: str
    batch_size: int
    device: str
    served: int = 0
    max_queue: int = 0
    """Requests admitted (body read) waiting behind the batch being scored, at most; beyond,
    senders wait in TCP."""
    queue_depth: int = 0
    peak_queue: int = 0


def encode_media(media: torch.Tensor, encoding: Literal["raw", "png"] = "raw") -> MediaBlob:
    arr = media.detach().cpu().contiguous().numpy()
    shape = tuple(int(s) for s in arr.shape)
    if encoding == "raw":
        return MediaBlob(shape=shape, data=arr.tobytes())
    from PIL import Image

    frames = []
    for b in range(shape[0]):
        for f in range(shape[1]):
            buf = io.BytesIO()
            # compress_level 1: PNG is lossless at every level; 1 is the fastest.
            Image.fromarray(arr[b, f]).save(buf, format="PNG", compress_level=1)
            frames.append(buf.getvalue())
    return MediaBlob(shape=shape, encoding="png", frames=frames)


def decode_media(blob: MediaBlob) -> torch.Tensor:
    """A MediaBlob back to uint8 [B, F, H, W, 3]; UserInputError on any inconsistency."""
    import numpy as np
    import torch

    shape = blob.shape
    if len(shape) != 5 or shape[-1] != 3 or min(shape) < 1:
        raise UserInputError(f"media shape must be [B, F, H, W, 3] with every size >= 1, got {list(shape)}")
    if blob.encoding == "raw":
        if len(blob.data) != math.prod(shape):
            raise UserInputError(
                f"raw media of shape {list(shape)} needs {math.prod(shape)} bytes, got {len(blob.data)}"
            )
        arr = np.frombuffer(blob.data, dtype=np.uint8).reshape(shape)
        return torch.from_numpy(arr.copy())
    return _decode_png(blob)


def _decode_png(blob: MediaBlob) -> torch.Tensor:
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    b, f, h, w, _ = blob.shape
    if len(blob.frames) != b * f:
        raise UserInputError(f"png media of shape {list(blob.shape)} needs {b * f} frames, got {len(blob.frames)}")
    out = np.empty(blob.shape, dtype=np.uint8)
    for i, png in enumerate(blob.frames):
        try:
            img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise UserInputError(f"png media frame {i}: not a readable PNG ({e})") from None
        if img.shape != (h, w, 3):
            raise UserInputError(f"png media frame {i}: size {list(img.shape)}, expected {[h, w, 3]}")
        out[i // f, i % f] = img
    return torch.from_numpy(out)

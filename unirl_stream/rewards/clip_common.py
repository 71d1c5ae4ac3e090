"""CLIP-family plumbing shared by PickScore, HPSv2, CLIPScore and the aesthetic predictor.

- Loading from a local folder or a hub id resolved from the local Hugging Face cache only
  (``local_files_only=True``): these machines cannot download, and a run must not
  silently fetch gigabytes. A missing model is a UserInputError saying how to get it.
- Preprocessing on tensors (so it runs batched, on the scorer's device) that reproduces
  the reference: PIL bicubic resize (shortest side, as CLIPImageProcessor; or longest
  side + zero padding, as HPSv2's open_clip ``ResizeMaxSize``), center crop, /255,
  mean/std. The resize reimplements Pillow's fixed-point bicubic as two matrix products
  (width, then height, each rounded to uint8 like Pillow), so it runs batched on any
  device and equals PIL pixel for pixel. (torch's own antialiased bicubic differs from
  PIL by up to 25 levels on noisy images: it does not round between the passes.)
- The same preprocessing with gradient, for differentiable rewards (``rounding``): the
  uint8 rounding between the passes is straight-through (forward: the same rounding,
  backward: identity), or skipped (``"float"``: a smooth path, for gradient checks).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from unirl_stream.api import UserInputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Rounding = Literal["uint8", "straight_through", "float"]
"""How the resize rounds between its passes: ``uint8`` as PIL (no gradient through it),
``straight_through`` (PIL's values forward, identity backward) or ``float`` (no rounding)."""


# ------------------------------------------------------------------------------- loading
def _missing(scorer: str, field: str, what: str, ref: str, err: Exception) -> UserInputError:
    return UserInputError(
        f"reward {scorer}: options.{field}: cannot load {what} {ref!r} from local files "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Download it on a "
        f"machine with network (`huggingface-cli download {ref}`) and copy the HF cache, or "
        f"set options.{field} to a local path"
    )


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_clip_model(ref: str, scorer: str, field: str, device: str, dtype: str) -> Any:
    """``CLIPModel.from_pretrained`` from a local path or the local HF cache, eval mode."""
    from transformers import CLIPModel

    try:
        model = CLIPModel.from_pretrained(ref, local_files_only=True, dtype=torch_dtype(dtype))
    except (OSError, ValueError) as e:
        raise _missing(scorer, field, "CLIP model", ref, e) from None
    return model.eval().requires_grad_(False).to(device)


def load_clip_processor(ref: str, scorer: str, field: str) -> Any:
    """``CLIPProcessor.from_pretrained`` (tokenizer + image processor config)."""
    from transformers import CLIPProcessor

    try:
        return CLIPProcessor.from_pretrained(ref, local_files_only=True)
    except (OSError, ValueError) as e:
        raise _missing(scorer, field, "CLIP processor", ref, e) from None


def resolve_file(ref: str, scorer: str, field: str) -> Path:
    """A local file, or ``owner/repo/path/in/repo`` from the local HF cache."""
    p = Path(ref).expanduser()
    if p.is_file():
        return p
    parts = ref.split("/")
    hub_like = not p.is_absolute() and not ref.startswith((".", "~")) and not p.exists()
    if len(parts) >= 3 and hub_like:
        from huggingface_hub import hf_hub_download

        try:
            return Path(
                hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]), local_files_only=True)
            )
        except Exception as e:  # hub raises several unrelated types for "not cached"
            raise _missing(scorer, field, "file", ref, e) from None
    raise UserInputError(
        f"reward {scorer}: options.{field}: no file at {ref!r} (give a local path, or "
        f"owner/repo/file from the local Hugging Face cache)"
    )


# -------------------------------------------------------------------------- preprocessing
class ImageGeometry:
    """Resize/crop/normalize parameters of one CLIP-family model.

    ``mode = "crop"``: resize the shortest side to ``short`` then center-crop ``crop``
    (CLIPImageProcessor). ``mode = "pad"``: resize the longest side to ``crop[0]`` and pad
    to a square with black (open_clip ``ResizeMaxSize``, used by HPSv2's val transform).
    ``center = "torchvision"``: the crop offset is torchvision ``CenterCrop``'s
    ``int(round(d / 2))`` (half to even) instead of CLIPImageProcessor's ``d // 2``; they
    differ by one pixel when the excess d is 3 mod 4 (ImageReward's transform).
    """

    def __init__(
        self,
        short: int,
        crop: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        mode: str = "crop",
        center: str = "floor",
    ) -> None:
        self.short, self.crop, self.mode, self.center = short, crop, mode, center
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    @classmethod
    def from_processor(cls, image_processor: Any) -> ImageGeometry:
        ip = image_processor
        if getattr(ip, "resample", 3) not in (3, None) or not getattr(ip, "do_center_crop", True):
            raise UserInputError(
                f"unsupported CLIP image processor settings (resample={ip.resample}, "
                f"do_center_crop={ip.do_center_crop}); expected bicubic + center crop"
            )
        size, crop = _as_dict(ip.size), _as_dict(ip.crop_size)
        if "shortest_edge" not in size:
            raise UserInputError(f"CLIP image processor size {size} has no shortest_edge")
        return cls(
            size["shortest_edge"], (crop["height"], crop["width"]), ip.image_mean, ip.image_std
        )

    def __call__(
        self, frames: torch.Tensor, device: str, dtype: Any, rounding: Rounding = "uint8"
    ) -> torch.Tensor:
        """[N, H, W, 3] on the uint8 scale -> normalized [N, 3, crop_h, crop_w] on ``device``.

        uint8 frames compute in float32; float frames (differentiable rewards) keep their
        dtype, so a float64 gradient check stays float64 until the model's ``dtype``.
        """
        import torch

        x = frames.to(device).permute(0, 3, 1, 2)
        x = x if x.is_floating_point() else x.float()
        x = self._pad(x, rounding) if self.mode == "pad" else self._crop(x, rounding)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return ((x / 255.0 - mean) / std).to(dtype)

    def _crop(self, x: torch.Tensor, rounding: Rounding) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = self.short
        # Same integer arithmetic as transformers' get_resize_output_image_size.
        nh, nw = (int(s * h / w), s) if w <= h else (s, int(s * w / h))
        ch, cw = self.crop
        if ch > nh or cw > nw:
            raise UserInputError(f"crop {self.crop} larger than resized image {(nh, nw)}")
        if self.center == "torchvision":
            top, left = int(round((nh - ch) / 2.0)), int(round((nw - cw) / 2.0))
        else:
            top, left = (nh - ch) // 2, (nw - cw) // 2
        return pil_bicubic(x, nh, nw, window=(top, left, ch, cw), rounding=rounding)

    def _pad(self, x: torch.Tensor, rounding: Rounding) -> torch.Tensor:
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        side = self.crop[0]
        scale = side / float(max(h, w))
        # open_clip skips resize *and* padding when scale == 1; a non-square input then
        # stays non-square and the ViT fails. We always pad to a square instead.
        nh, nw = (round(h * scale), round(w * scale)) if scale != 1.0 else (h, w)
        x = pil_bicubic(x, nh, nw, rounding=rounding)
        ph, pw = side - nh, side - nw
        return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)


def _as_dict(size: Any) -> dict[str, int]:
    if isinstance(size, int):
        return {"shortest_edge": size, "height": size, "width": size}
    return {k: v for k, v in dict(size).items() if v is not None}


_PRECISION = 22  # PIL's fixed-point bits for 8-bit resampling (32 - 8 - 2)


def _bicubic(x: float) -> float:
    """PIL's bicubic kernel (a = -0.5)."""
    a, x = -0.5, abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


@lru_cache(maxsize=64)
def _pil_weights(in_size: int, out_size: int) -> torch.Tensor:
    """[out, in] float64 matrix of PIL's integer (fixed-point) bicubic coefficients.

    Written from Pillow's resampling algorithm: the kernel is stretched by the
    downscale factor (antialiasing), each row's weights are normalized to sum 1, then
    rounded to integers at 2**22 scale (half away from zero).
    """
    import torch

    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ss = 1.0 / filterscale  # multiply by the reciprocal, as Pillow does (same rounding)
    rows = [[0.0] * in_size for _ in range(out_size)]
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        w = [_bicubic((x - center + 0.5) * ss) for x in range(lo, hi)]
        total = sum(w)
        for x, wx in zip(range(lo, hi), w, strict=True):
            k = (wx / total if total != 0.0 else wx) * (1 << _PRECISION)
            rows[xx][x] = float(int(k - 0.5) if k < 0 else int(k + 0.5))
    # Cached across calls: a matrix first built under ``score``'s inference mode would be an
    # inference tensor, which a later ``score_tensor`` could not save for backward.
    with torch.inference_mode(False):
        return torch.tensor(rows, dtype=torch.float64)


def _resample_last(
    x: torch.Tensor, out_size: int, start: int, count: int, rounding: Rounding
) -> torch.Tensor:
    """One PIL pass along the last axis, output pixels ``start : start + count`` only:
    integer weights, + half, shift, clip to uint8. float64 holds every partial sum
    exactly (< 2**53), so this is PIL's integer result (for integer inputs)."""
    weights = _pil_weights(x.shape[-1], out_size)[start : start + count].to(x.device)
    if rounding == "float":  # the same weights, no rounding or clipping: smooth in x
        return x @ (weights.T / float(1 << _PRECISION))
    s = (x @ weights.T + float(1 << (_PRECISION - 1))) / float(1 << _PRECISION)  # power-of-2 divide: exact
    rounded = (s.detach() if rounding == "straight_through" else s).floor().clamp(0, 255)
    if rounding == "uint8":
        return rounded
    # Straight-through: s - s.detach() is exactly 0 forward (the values stay PIL's) and
    # the identity backward (floor and clip alone would pass no gradient).
    return rounded + (s - s.detach())


def pil_bicubic(
    x: torch.Tensor,
    h: int,
    w: int,
    window: tuple[int, int, int, int] | None = None,
    rounding: Rounding = "uint8",
) -> torch.Tensor:
    """PIL ``Image.resize((w, h), BICUBIC)`` of [N, C, H, W] values in [0, 255], optionally
    only the output ``window = (top, left, height, width)`` (a crop of the result);
    ``rounding`` says what happens at the uint8 rounding after each pass (``Rounding``).

    PIL resizes width first, rounds to uint8, then height; we do the same, so the result
    equals PIL's pixel for pixel (tests compare with CLIPImageProcessor, which uses PIL).
    Output pixels depend only on their own weight row, so computing just the cropped
    window gives the same pixels for less work. float64 on purpose: fp32 cannot hold
    the fixed-point sums exactly.
    """
    top, left, ch, cw = window if window is not None else (0, 0, h, w)
    dtype = x.dtype
    x = x.double()
    if x.shape[-1] != w:
        x = _resample_last(x, w, left, cw, rounding)
    elif cw != w:
        x = x[..., left : left + cw]
    if x.shape[-2] != h:
        x = _resample_last(x.transpose(-1, -2), h, top, ch, rounding).transpose(-1, -2)
    elif ch != h:
        x = x[..., top : top + ch, :]
    return x.to(dtype)


# ----------------------------------------------------------------------------- embedding
def _pooled(out: Any) -> torch.Tensor:
    # transformers 4.x returns the projected tensor, 5.x a ModelOutput whose pooler_output
    # holds it.
    return out if not hasattr(out, "pooler_output") else out.pooler_output


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 up to float32; float64 (a gradient check's model) stays float64."""
    import torch

    return x.to(torch.promote_types(x.dtype, torch.float32))


def image_embeds(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """L2-normalized projected image embeddings, float32 (or float64) [N, D]."""
    e = at_least_float32(_pooled(model.get_image_features(pixel_values=pixels)))
    return e / e.norm(dim=-1, keepdim=True)


def text_embeds(model: Any, tokenizer: Any, texts: Sequence[str], device: str) -> torch.Tensor:
    """L2-normalized projected text embeddings, float32 [len(texts), D].

    Each distinct text is encoded once (a GRPO group shares its prompt). Padding is to
    the model's full context (77), not to the batch's longest text, so a text's embedding
    does not depend on which other texts share the batch.
    """
    import torch

    uniq = list(dict.fromkeys(texts))
    max_len = int(model.config.text_config.max_position_embeddings)
    tok = tokenizer(uniq, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    out = model.get_text_features(
        input_ids=tok["input_ids"].to(device), attention_mask=tok["attention_mask"].to(device)
    )
    e = at_least_float32(_pooled(out))
    e = e / e.norm(dim=-1, keepdim=True)
    index = torch.tensor([uniq.index(t) for t in texts], device=e.device)
    return e[index]


def frame_embeds(
    model: Any, geometry: ImageGeometry, frames: torch.Tensor, device: str, rounding: Rounding = "uint8"
) -> torch.Tensor:
    """Normalized image embeddings of every frame: [B, F, H, W, 3] -> [B, F, D]."""
    b, f = frames.shape[:2]
    dtype = next(model.parameters()).dtype
    pixels = geometry(frames.reshape(b * f, *frames.shape[2:]), device, dtype, rounding)
    return image_embeds(model, pixels).view(b, f, -1)


def frame_text_cosine(
    model: Any,
    tokenizer: Any,
    geometry: ImageGeometry,
    frames: torch.Tensor,
    texts: Sequence[str],
    device: str,
    rounding: Rounding = "uint8",
) -> torch.Tensor:
    """Cosine similarity of every frame with its sample's text: [B, F, H, W, 3] -> [B, F]."""
    img = frame_embeds(model, geometry, frames, device, rounding)
    txt = text_embeds(model, tokenizer, texts, device)
    return (img * txt[:, None, :]).sum(dim=-1)

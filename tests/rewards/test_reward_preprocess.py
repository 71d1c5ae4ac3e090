"""Our tensor preprocessing against the reference preprocessing of each model family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from reward_helpers import make_media
from transformers import CLIPImageProcessor

from unirl_stream.rewards.clip_common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageGeometry

SIZES = [(64, 64), (256, 256), (61, 97), (300, 200), (480, 832), (224, 224), (1080, 1920)]


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_clip_crop_matches_clipimageprocessor(h: int, w: int) -> None:
    """CLIPImageProcessor (the PIL path transformers uses for CLIP: bicubic resize of the
    shortest side, center crop, /255, OpenAI mean/std) is the reference: equal values."""
    processor = CLIPImageProcessor()  # CLIP defaults: 224, bicubic, OpenAI statistics
    geometry = ImageGeometry.from_processor(processor)
    media = make_media(2, 1, h, w, seed=h + w)[:, 0]
    ours = geometry(media, "cpu", torch.float32)
    ref = processor(images=[m.numpy() for m in media], return_tensors="pt")["pixel_values"]
    assert ours.shape == ref.shape == (2, 3, 224, 224)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_tiny_processor_geometry_is_read_from_its_config(tiny) -> None:
    processor = CLIPImageProcessor.from_pretrained(str(tiny.clip), local_files_only=True)
    geometry = ImageGeometry.from_processor(processor)
    assert (geometry.short, geometry.crop) == (32, (32, 32))
    media = make_media(3, 1, 64, 48, seed=5)[:, 0]
    ref = processor(images=[m.numpy() for m in media], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(geometry(media, "cpu", torch.float32), ref, rtol=0, atol=1e-6)


def _hps_reference(img: np.ndarray, side: int) -> torch.Tensor:
    """open_clip's ResizeMaxSize + ToTensor + Normalize (HPSv2's val transform), on PIL."""
    h, w = img.shape[:2]
    scale = side / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    resized = Image.fromarray(img).resize((nw, nh), Image.BICUBIC)
    canvas = Image.new("RGB", (side, side), (0, 0, 0))
    canvas.paste(resized, ((side - nw) // 2, (side - nh) // 2))
    x = torch.from_numpy(np.array(canvas)).permute(2, 0, 1).float() / 255
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize(("h", "w"), [(64, 48), (256, 256), (100, 300), (480, 832)])
def test_hps_pad_matches_open_clip_resize_max_size(h: int, w: int) -> None:
    geometry = ImageGeometry(224, (224, 224), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, mode="pad")
    media = make_media(2, 1, h, w, seed=h * w)[:, 0]
    ours = geometry(media, "cpu", torch.float32)
    ref = torch.stack([_hps_reference(m.numpy(), 224) for m in media])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    if h != w:  # the padding is black (0 before normalization) and on the right sides
        black = ((0 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)).view(3, 1)
        edge = ours[0, :, :, 0] if w < h else ours[0, :, 0, :]
        assert torch.allclose(edge, black.expand_as(edge))


def test_torch_bicubic_alone_would_not_match_pil() -> None:
    """Why we reimplement Pillow's resize: torch's antialiased bicubic skips the uint8
    rounding between the two passes and lands levels away from PIL on detailed images."""
    import torch.nn.functional as F

    from unirl_stream.rewards.clip_common import pil_bicubic

    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (1, 3, 256, 256), generator=g).float()
    ref = torch.from_numpy(
        np.array(Image.fromarray(img[0].permute(1, 2, 0).byte().numpy()).resize((224, 224), Image.BICUBIC))
    ).permute(2, 0, 1).float()
    ours = pil_bicubic(img, 224, 224)[0]
    naive = F.interpolate(img, size=(224, 224), mode="bicubic", antialias=True).round().clamp(0, 255)[0]
    assert torch.equal(ours, ref)
    assert (naive - ref).abs().max() >= 2

"""ImageReward: preprocessing equals torchvision-on-PIL, the ViT and head equal few-line
references on the checkpoint's own (BLIP) tensors, batching and NaN behave."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from reward_helpers import make_media, make_prompts

from unirl_stream.api import UserInputError
from unirl_stream.rewards.clip_common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageGeometry
from unirl_stream.rewards.combine import RewardSet
from unirl_stream.rewards.config import RewardSpec
from unirl_stream.rewards.imagereward import MEAN, STD, ImageReward

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def scorer(tiny_imagereward) -> ImageReward:
    return ImageReward(msgspec.convert({**tiny_imagereward, "batch_size": 4}, ImageReward.Config))


def _reference_pixels(img: np.ndarray, side: int) -> torch.Tensor:
    """ImageReward's transform: Resize(side, BICUBIC) and CenterCrop(side) as torchvision does
    them on a PIL image, ToTensor, Normalize(OpenAI CLIP statistics)."""
    h, w = img.shape[:2]
    nh, nw = (int(side * h / w), side) if w <= h else (side, int(side * w / h))
    pil = Image.fromarray(img).resize((nw, nh), Image.BICUBIC)
    top, left = int(round((nh - side) / 2.0)), int(round((nw - side) / 2.0))
    x = torch.from_numpy(np.array(pil.crop((left, top, left + side, top + side)))).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)


# (227, 224): the crop excess is 3, where torchvision's round-half-even offset (2) and
# CLIPImageProcessor's floor (1) differ
@pytest.mark.parametrize(("h", "w"), [(227, 224), (224, 231), (61, 97), (300, 200), (480, 832)])
def test_preprocessing_matches_torchvision_on_pil(h: int, w: int) -> None:
    geometry = ImageGeometry(224, (224, 224), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, center="torchvision")
    media = make_media(2, 1, h, w, seed=h + w)[:, 0]
    ref = torch.stack([_reference_pixels(m.numpy(), 224) for m in media])
    torch.testing.assert_close(geometry(media, "cpu", torch.float32), ref, rtol=0, atol=1e-6)


def _reference_vit(sd: dict[str, torch.Tensor], pixels: torch.Tensor, heads: int) -> torch.Tensor:
    """BLIP's ViT written from its own key names: pre-norm blocks, exact GELU, eps 1e-6."""
    p = "blip.visual_encoder."
    x = F.conv2d(pixels, sd[p + "patch_embed.proj.weight"], sd[p + "patch_embed.proj.bias"],
                 stride=sd[p + "patch_embed.proj.weight"].shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([sd[p + "cls_token"].expand(len(x), -1, -1), x], dim=1) + sd[p + "pos_embed"]
    n, t, d = x.shape
    for i in range(len({k.split(".")[3] for k in sd if k.startswith(p + "blocks.")})):
        b = f"{p}blocks.{i}."
        y = F.layer_norm(x, (d,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], 1e-6)
        q, k, v = F.linear(y, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]).view(n, t, 3, heads, -1).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + F.linear(a.transpose(1, 2).reshape(n, t, d), sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        y = F.layer_norm(x, (d,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], 1e-6)
        y = F.linear(F.gelu(F.linear(y, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])),
                     sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        x = x + y
    return F.layer_norm(x, (d,), sd[p + "norm.weight"], sd[p + "norm.bias"], 1e-6)


def test_vit_and_head_match_references_on_blip_tensors(scorer: ImageReward, tiny_imagereward) -> None:
    sd = torch.load(tiny_imagereward["checkpoint"], weights_only=True)
    media, prompts = make_media(3, 1, 48, 40, seed=7), make_prompts(3)
    pixels = scorer.geometry(media[:, 0], "cpu", torch.float32)
    with torch.inference_mode():
        ours = scorer.vision(pixel_values=pixels).last_hidden_state
        torch.testing.assert_close(ours, _reference_vit(sd, pixels, heads=2), rtol=0, atol=2e-5)
        cls = scorer.features(media, prompts)
        x = cls
        for i in (0, 2, 4, 6, 7):  # no activations between the Linears, as published
            x = x @ sd[f"mlp.layers.{i}.weight"].T + sd[f"mlp.layers.{i}.bias"]
        want = ((x[:, 0] - 0.16717362830052426) / 1.0333394966054072).double()
    got = torch.tensor(scorer.score(media, prompts).scores, dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (MEAN, STD) == (0.16717362830052426, 1.0333394966054072)
    assert got.std() > 1e-3  # the samples differ: a constant score would pass trivially otherwise


def test_prompt_is_padded_to_35_tokens_and_matters(scorer: ImageReward) -> None:
    media = make_media(1, 1, 32, 32, seed=2).expand(2, -1, -1, -1, -1).contiguous()
    prompts = make_prompts(2)  # "the cat", "a red dog"
    tok = scorer.tokenizer([p.text for p in prompts], padding="max_length", truncation=True,
                           max_length=35, return_tensors="pt")
    assert tok["input_ids"].shape == (2, 35) and tok["input_ids"][0, 0] == scorer.tokenizer.cls_token_id
    a, b = scorer.score(media, prompts).scores
    assert abs(a - b) > 1e-4  # same image, different prompt, different score


def test_deterministic_and_batch_invariant(scorer: ImageReward, tiny_imagereward) -> None:
    media, prompts = make_media(7, 2, 40, 56, seed=9), make_prompts(7)
    whole = scorer.score(media, prompts).scores
    assert scorer.score(media, prompts).scores == whole  # same shapes, same process: bitwise
    again = ImageReward(msgspec.convert({**tiny_imagereward, "batch_size": 3}, ImageReward.Config))
    split = RewardSet([RewardSpec(name="imagereward")], [again]).score(
        [p.id for p in prompts], media, prompts).terms["imagereward"]
    assert max(abs(x - y) for x, y in zip(whole, split, strict=True)) < 1e-5


def test_nan_scores_reach_on_nan(scorer: ImageReward) -> None:
    media, prompts = make_media(2, 1, 32, 32), make_prompts(2)
    bias = scorer.head[-1].bias
    saved = bias.detach().clone()
    try:
        with torch.no_grad():
            bias.fill_(float("nan"))
        result = RewardSet([RewardSpec(name="imagereward", on_nan="drop")], [scorer]).score(["a", "b"], media, prompts)
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert [b.sample_id for b in result.bad] == ["a", "b"] and all(math.isnan(t) for t in result.totals)


def test_checkpoint_errors_name_the_option(tiny_imagereward, tmp_path) -> None:
    sd = torch.load(tiny_imagereward["checkpoint"], weights_only=True)
    del sd["blip.text_encoder.encoder.layer.1.output.dense.weight"]
    bad = tmp_path / "cut.pt"
    torch.save(sd, bad)
    with pytest.raises(UserInputError, match=r"options\.checkpoint: text_encoder does not fit.*layer\.1\.output\.dense\.weight"):
        ImageReward(msgspec.convert({**tiny_imagereward, "checkpoint": str(bad)}, ImageReward.Config))
    with pytest.raises(UserInputError, match=r"options\.checkpoint: .*nothing\.pt"):
        ImageReward(msgspec.convert({**tiny_imagereward, "checkpoint": str(tmp_path / "nothing.pt")},
                                    ImageReward.Config))

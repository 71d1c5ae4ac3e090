"""HPSv3: the reference's resize, the reward token's state through a few-line ranknet
head, old/new checkpoint names, batching and NaN."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
import torch
from PIL import Image
from reward_helpers import make_media, make_prompts
from safetensors.torch import load_file, save_file
from transformers import Qwen2VLImageProcessorPil

from unirl_stream.api import UserInputError
from unirl_stream.rewards.combine import RewardSet
from unirl_stream.rewards.config import RewardSpec
from unirl_stream.rewards.hpsv3 import INSTRUCTION, SUFFIX, HPSv3
from unirl_stream.rewards.qwen_vl import QwenVL

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def scorer(tiny_hpsv3) -> HPSv3:
    return HPSv3(msgspec.convert({**tiny_hpsv3, "batch_size": 4}, HPSv3.Config))


def _smart_resize(h: int, w: int, pixels: int, factor: int = 28) -> tuple[int, int]:
    """qwen-vl-utils' smart_resize with min_pixels = max_pixels = pixels (HPSv3's call)."""
    hb, wb = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    if hb * wb > pixels:
        beta = math.sqrt(h * w / pixels)
        return math.floor(h / beta / factor) * factor, math.floor(w / beta / factor) * factor
    if hb * wb < pixels:
        beta = math.sqrt(pixels / (h * w))
        return math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return hb, wb


@pytest.mark.parametrize(("h", "w"), [(48, 64), (512, 512), (480, 832), (100, 37)])
def test_pixels_match_the_reference_resize(scorer: HPSv3, h: int, w: int) -> None:
    """Reference: PIL bicubic to the smart_resize grid, then Qwen's processor at its own
    (wide) bounds; ours: QwenVL.patches at min = max = pixels. Equal while the
    reference's first resize stays above Qwen's own minimum (3136 px): true at HPSv3's
    200704 px, not at the tiny tests' 3136, so those two sizes are checked here."""
    img = make_media(1, 1, h, w, seed=h + w)[0, 0].numpy()
    for pixels in (112 * 112, 256 * 28 * 28):
        nh, nw = _smart_resize(h, w, pixels)
        ref_img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BICUBIC))
        ref = Qwen2VLImageProcessorPil()(images=[ref_img], return_tensors="pt")
        vl = QwenVL(scorer.vl.model, scorer.vl.tokenizer, scorer.vl.image_processor, "cpu", pixels, pixels)
        rows, grid = vl.patches(img[None])
        assert [grid] == ref["image_grid_thw"].tolist() == [[1, nh // 14, nw // 14]]
        torch.testing.assert_close(rows, ref["pixel_values"], rtol=0, atol=1e-6)


def test_score_is_mu_of_the_head_at_the_reward_token(scorer: HPSv3, tiny_hpsv3) -> None:
    state = load_file(tiny_hpsv3["checkpoint"])
    media, prompts = make_media(5, 1, 48, 64, seed=8), make_prompts(5)
    got = scorer.score(media, prompts).scores
    want = []
    for i in range(5):  # one unpadded sample at a time
        inputs = scorer.vl.inputs([media[i, 0].numpy()], [INSTRUCTION.format(text_prompt=prompts[i].text) + SUFFIX])
        with torch.inference_mode():
            hidden = scorer.vl.model.model(**inputs).last_hidden_state[0]
        x = hidden[inputs["input_ids"][0] == scorer.reward_id][0].float()
        x = torch.relu(x @ state["rm_head.0.weight"].T + state["rm_head.0.bias"])
        x = torch.relu(x @ state["rm_head.3.weight"].T + state["rm_head.3.bias"])
        want.append(float((x @ state["rm_head.5.weight"].T + state["rm_head.5.bias"])[0]))
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-5
    assert max(got) - min(got) > 1e-3
    split = [v for k in range(0, 5, 2) for v in scorer.score(media[k : k + 2], prompts[k : k + 2]).scores]
    assert max(abs(a - b) for a, b in zip(got, split, strict=True)) < 1e-5
    assert scorer.score(media, prompts).scores == got


def test_nan_reaches_on_nan(scorer: HPSv3) -> None:
    bias = scorer.head[-1].bias
    saved = bias.detach().clone()
    try:
        with torch.no_grad():
            bias.fill_(float("nan"))
        result = RewardSet([RewardSpec(name="hpsv3", on_nan="drop")], [scorer]).score(
            ["a", "b"], make_media(2, 1, 32, 32), make_prompts(2))
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert [b.sample_id for b in result.bad] == ["a", "b"]


def test_checkpoint_errors_name_the_option(tiny_hpsv3, tmp_path) -> None:
    state = load_file(tiny_hpsv3["checkpoint"])
    cut = {k: v for k, v in state.items() if k != "model.layers.1.mlp.up_proj.weight"}
    save_file(cut, str(tmp_path / "cut.safetensors"))
    with pytest.raises(UserInputError, match=r"options\.checkpoint: .*missing \['model\.language_model\.layers\.1\.mlp\.up_proj\.weight'\]"):
        HPSv3(msgspec.convert({**tiny_hpsv3, "checkpoint": str(tmp_path / "cut.safetensors")}, HPSv3.Config))
    save_file({k: v for k, v in state.items() if not k.startswith("rm_head.")}, str(tmp_path / "nohead.safetensors"))
    with pytest.raises(UserInputError, match=r"options\.checkpoint: .* has no ranknet rm_head"):
        HPSv3(msgspec.convert({**tiny_hpsv3, "checkpoint": str(tmp_path / "nohead.safetensors")}, HPSv3.Config))

"""VideoAlign: the video patch layout against Qwen's documented one built from PIL, the
three heads against a per-sample reference, batching, NaN and checkpoint errors."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch
from PIL import Image
from reward_helpers import make_media, make_prompts
from safetensors.torch import load_file

from unirl_stream.api import UserInputError
from unirl_stream.rewards.clip_common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from unirl_stream.rewards.combine import RewardSet
from unirl_stream.rewards.config import RewardSpec
from unirl_stream.rewards.videoalign import PROMPT, TOKENS, VideoAlign

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def scorer(tiny_videoalign) -> VideoAlign:
    return VideoAlign(msgspec.convert(tiny_videoalign, VideoAlign.Config))


def _grid(h: int, w: int, lo: int, hi: int, f: int = 28) -> tuple[int, int]:
    hb, wb = max(f, round(h / f) * f), max(f, round(w / f) * f)
    if hb * wb > hi:
        beta = math.sqrt(h * w / hi)
        return math.floor(h / beta / f) * f, math.floor(w / beta / f) * f
    if hb * wb < lo:
        beta = math.sqrt(lo / (h * w))
        return math.ceil(h * beta / f) * f, math.ceil(w * beta / f) * f
    return hb, wb


def _reference_video_rows(video: np.ndarray, lo: int, hi: int) -> torch.Tensor:
    """Qwen2-VL's video patches: PIL bicubic per frame, rescale + normalize, then its
    (t, T, C, h/m, m, P, w/m, m, P) -> (t, h/m, w/m, m, m, C, T, P, P) flattening."""
    nh, nw = _grid(video.shape[1], video.shape[2], lo, hi)
    frames = np.stack([np.asarray(Image.fromarray(f).resize((nw, nh), Image.BICUBIC)) for f in video])
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    t, gh, gw = len(video) // 2, nh // 14, nw // 14
    x = x.reshape(t, 2, 3, gh // 2, 2, 14, gw // 2, 2, 14).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(t * gh * gw, 3 * 2 * 14 * 14)


def test_video_layout_equals_qwen_reference(scorer: VideoAlign) -> None:
    videos = [make_media(1, 4, 48, 64, seed=s)[0].numpy() for s in (1, 2)] + [make_media(1, 2, 100, 37, seed=3)[0].numpy()]
    inputs = scorer.vl.video_inputs(videos, ["a", "b", "c"])
    ref = torch.cat([_reference_video_rows(v, 28 * 28, 56 * 56) for v in videos])
    torch.testing.assert_close(inputs["pixel_values_videos"], ref, rtol=0, atol=1e-6)
    assert inputs["video_grid_thw"].tolist() == [[2, 4, 4], [2, 4, 4], [1, 8, 2]]
    pad = scorer.vl.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert (inputs["input_ids"] == pad).sum(1).tolist() == [8, 8, 4]
    assert torch.equal(inputs["mm_token_type_ids"], 2 * (inputs["input_ids"] == pad).int())


def test_heads_equal_the_per_sample_reference(scorer: VideoAlign, tiny_videoalign) -> None:
    shards = sorted(Path(tiny_videoalign["checkpoint"]).glob("*.safetensors"))
    weight = next(w for f in shards if (w := load_file(f).get("rm_head.weight")) is not None)
    media, prompts = make_media(3, 6, 48, 64, seed=9), make_prompts(3)
    out = scorer.score(media, prompts)
    ids = scorer.vl.tokenizer.convert_tokens_to_ids(TOKENS)
    for i in range(3):
        video = media[i, [0, 2, 3, 5]].numpy()  # frame_indices(6, 4)
        inputs = scorer.vl.video_inputs([video], [PROMPT.format(text_prompt=prompts[i].text)])
        with torch.inference_mode():
            hidden = scorer.vl.model.model(**inputs).last_hidden_state[0]
        want = [float(hidden[inputs["input_ids"][0] == t][0] @ weight[j]) for j, t in enumerate(ids)]
        got = [out.terms[h][i] for h in ("VQ", "MQ", "TA")]
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-5
        assert abs(out.scores[i] - sum(want)) < 1e-5  # overall = VQ + MQ + TA
    assert max(out.scores) - min(out.scores) > 1e-4
    split = [v for k in range(3) for v in scorer.score(media[k : k + 1], prompts[k : k + 1]).scores]
    assert max(abs(a - b) for a, b in zip(out.scores, split, strict=True)) < 1e-5
    assert scorer.score(media, prompts).scores == out.scores


def test_normalization_and_head_choice(tiny_videoalign, scorer: VideoAlign) -> None:
    media, prompts = make_media(2, 4, 32, 32, seed=4), make_prompts(2)
    plain = scorer.score(media, prompts).terms
    mq = VideoAlign(msgspec.convert({**tiny_videoalign, "heads": ["MQ"], "mean": {"MQ": 1.0}, "std": {"MQ": 2.0}},
                                    VideoAlign.Config))
    got = mq.score(media, prompts).scores
    assert got == pytest.approx([(v - 1.0) / 2.0 for v in plain["MQ"]], abs=1e-9)
    with pytest.raises(msgspec.ValidationError, match="mean keys must be among"):
        msgspec.convert({"mean": {"XX": 1.0}}, VideoAlign.Config)


def test_nan_and_checkpoint_errors(scorer: VideoAlign, tiny_videoalign, tmp_path) -> None:
    saved = scorer.head.clone()
    try:
        scorer.head.fill_(float("nan"))
        result = RewardSet([RewardSpec(name="videoalign", on_nan="drop")], [scorer]).score(
            ["a", "b"], make_media(2, 2, 32, 32), make_prompts(2))
    finally:
        scorer.head.copy_(saved)
    assert [b.sample_id for b in result.bad] == ["a", "b"]
    with pytest.raises(UserInputError, match=r"options\.checkpoint: .*holds no \.safetensors file"):
        VideoAlign(msgspec.convert({**tiny_videoalign, "checkpoint": str(tmp_path)}, VideoAlign.Config))

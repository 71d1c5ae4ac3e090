"""The VLM judge reads its score from next-token logits: a per-sample, cache-free reference
gives the same numbers as the batched generate path; uniform logits give known values."""

from __future__ import annotations

import math

import msgspec
import pytest
import torch
from reward_helpers import make_media, make_prompts
from transformers import Qwen2VLImageProcessorPil

from unirl_stream.api import UserInputError
from unirl_stream.rewards.combine import RewardSet
from unirl_stream.rewards.config import RewardSpec
from unirl_stream.rewards.qwen_vl import QwenVL
from unirl_stream.rewards.vlm_judge import VlmJudge

pytestmark = pytest.mark.timeout(120)


def _judge(folder, **options) -> VlmJudge:
    opts = {"model": str(folder), "dtype": "float32", "max_pixels": 112 * 112, **options}
    return VlmJudge(msgspec.convert(opts, VlmJudge.Config))


@pytest.fixture(scope="module")
def judges(tiny_qwen25_vl) -> dict[str, VlmJudge]:
    return {s: _judge(tiny_qwen25_vl, scale=s) for s in ("yes_no", "rating")}


def _last_logprobs(judge: VlmJudge, inputs: dict, extra: int | None = None) -> torch.Tensor:
    """One full forward (no cache, no padding) of one sample, optionally with a token appended."""
    if extra is not None:
        grow = {k: torch.cat([inputs[k], torch.tensor([[v]], dtype=inputs[k].dtype)], 1)
                for k, v in (("input_ids", extra), ("attention_mask", 1), ("mm_token_type_ids", 0))}
        inputs = dict(inputs, **grow)
    with torch.inference_mode():
        return judge.vl.model(**inputs).logits[0, -1].float().log_softmax(-1)


def _reference(judge: VlmJudge, frame, question: str) -> float:
    tok = judge.vl.tokenizer
    inputs = judge.vl.inputs([frame], [question])
    p = _last_logprobs(judge, inputs).exp()
    if judge.config.scale == "yes_no":
        y = sum(p[tok.convert_tokens_to_ids(t)] for t in ("Yes", "yes"))
        n = sum(p[tok.convert_tokens_to_ids(t)] for t in ("No", "no"))
        return float(y / (y + n))
    digit = {d: tok.convert_tokens_to_ids(str(d)) for d in range(10)}
    p0 = _last_logprobs(judge, inputs, extra=digit[1]).exp()[digit[0]]  # "1" then "0": ten
    probs = {1: p[digit[1]] * (1 - p0), 10: p[digit[1]] * p0} | {r: p[digit[r]] for r in range(2, 10)}
    return float(sum(r * v for r, v in probs.items()) / sum(probs.values()))


@pytest.mark.parametrize("scale", ["yes_no", "rating"])
def test_batched_scores_equal_the_per_sample_reference(judges, scale: str) -> None:
    judge = judges[scale]
    media, prompts = make_media(5, 1, 48, 64, seed=21), make_prompts(5)
    got = judge.score(media, prompts).scores
    want = [_reference(judge, media[i, 0].numpy(), judge.config.question(prompts[i].text)) for i in range(5)]
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-5
    assert max(got) - min(got) > 1e-3  # the samples differ: the reference is not vacuous
    lo, hi = (0.0, 1.0) if scale == "yes_no" else (1.0, 10.0)
    assert all(lo <= v <= hi for v in got)
    # batching invariance: other batch splits (other padding) give the same numbers
    split = [v for k in range(0, 5, 2) for v in judge.score(media[k : k + 2], prompts[k : k + 2]).scores]
    assert max(abs(a - b) for a, b in zip(got, split, strict=True)) < 1e-5
    assert judge.score(media, prompts).scores == got  # deterministic


@pytest.mark.parametrize(("lo", "hi"), [(3136, 448 * 448), (256 * 28 * 28, 256 * 28 * 28), (3136, 3136)])
def test_patches_equal_the_pil_image_processor(judges, lo: int, hi: int) -> None:
    """QwenVL.patches (tensors, batched over frames) against Qwen2VLImageProcessorPil."""
    base = judges["yes_no"].vl
    vl = QwenVL(base.model, base.tokenizer, base.image_processor, "cpu", lo, hi)
    for h, w in [(48, 64), (512, 512), (480, 832), (100, 37), (227, 224)]:
        img = make_media(1, 1, h, w, seed=h * w)[0, 0].numpy()
        ref = Qwen2VLImageProcessorPil()(images=[img], size={"shortest_edge": lo, "longest_edge": hi},
                                         return_tensors="pt")
        rows, grid = vl.patches(img[None])
        assert [grid] == ref["image_grid_thw"].tolist()
        torch.testing.assert_close(rows, ref["pixel_values"], rtol=0, atol=1e-6)


def test_inputs_expand_each_image_pad_to_its_merged_patches(judges) -> None:
    vl = judges["yes_no"].vl
    media = make_media(2, 1, 48, 100, seed=3)
    inputs = vl.inputs([media[0, 0].numpy(), media[1, 0, :30, :40].numpy()], ["a", "a longer question here"])
    pad = vl.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    counts = (inputs["input_ids"] == pad).sum(1).tolist()
    assert counts == [int(g.prod()) // 4 for g in inputs["image_grid_thw"]] and counts[0] != counts[1]
    assert torch.equal(inputs["mm_token_type_ids"].bool(), inputs["input_ids"] == pad)  # M-RoPE needs it
    mask = inputs["attention_mask"]
    assert mask[:, -1].all() and not mask[int(mask.sum(1).argmin()), 0]  # left padding


def test_uniform_logits_give_the_exact_parse(judges) -> None:
    """With the final norm zeroed every logit is 0: P(yes) = P(no) gives 0.5; the rating's
    mass is u(1-u) on 1, u on 2..9, u^2 on 10 (u = 1/V), whose mean is exactly 5 + u."""
    norm = judges["yes_no"].vl.model.model.language_model.norm.weight
    saved = norm.detach().clone()
    try:
        with torch.no_grad():
            norm.zero_()
        media, prompts = make_media(3, 1, 32, 32, seed=1), make_prompts(3)
        assert judges["yes_no"].score(media, prompts).scores == pytest.approx([0.5] * 3, abs=1e-7)
        u = 1.0 / judges["rating"].vl.model.config.text_config.vocab_size
        judges["rating"].vl.model.model.language_model.norm.weight.data.zero_()
        assert judges["rating"].score(media, prompts).scores == pytest.approx([5.0 + u] * 3, abs=1e-6)
        with torch.no_grad():
            norm.fill_(float("nan"))
        result = RewardSet([RewardSpec(name="vlm_judge", on_nan="drop")], [judges["yes_no"]]).score(
            ["a", "b", "c"], media, prompts)
        assert [b.sample_id for b in result.bad] == ["a", "b", "c"] and all(map(math.isnan, result.totals))
    finally:
        with torch.no_grad():
            for j in judges.values():
                j.vl.model.model.language_model.norm.weight.copy_(saved)


def test_bad_options_name_the_field(tiny_qwen25_vl) -> None:
    with pytest.raises(msgspec.ValidationError, match=r"template must contain \{prompt\}"):
        msgspec.convert({"template": "Is it good?"}, VlmJudge.Config)
    with pytest.raises(UserInputError, match=r"options\.yes: 'Maybe' is 5 tokens"):
        _judge(tiny_qwen25_vl, yes=["Maybe"])
    with pytest.raises(UserInputError, match=r"options\.model: cannot load Qwen-VL model"):
        _judge(tiny_qwen25_vl.parent / "absent")

"""PickScore, VideoPickScore, CLIPScore and the aesthetic predictor on tiny real-architecture
models loaded from disk through their real loaders."""

from __future__ import annotations

import msgspec
import pytest
import torch
from PIL import Image
from reward_helpers import make_media, make_prompts
from transformers import CLIPModel, CLIPProcessor

from unirl_stream.api import UserInputError
from unirl_stream.rewards.aesthetic import Aesthetic, aesthetic_head
from unirl_stream.rewards.clipscore import CLIPScore
from unirl_stream.rewards.pickscore import PickScore, VideoPickScore


def _pick(tiny, cls=PickScore, **options):
    return cls(msgspec.convert({"model": str(tiny.clip), "processor": str(tiny.clip), **options}, cls.Config))


def _reference_cosine(tiny, media: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """The PickScore model-card recipe: CLIPProcessor on PIL images and the texts, then
    normalized get_image_features / get_text_features; diagonal pairs."""
    processor = CLIPProcessor.from_pretrained(str(tiny.clip), local_files_only=True)
    model = CLIPModel.from_pretrained(str(tiny.clip), local_files_only=True).eval()
    images = [Image.fromarray(m.numpy()) for m in media[:, 0]]
    img_in = processor(images=images, return_tensors="pt")
    txt_in = processor(text=texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        img = model.get_image_features(**img_in)
        txt = model.get_text_features(**txt_in)
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return (img * txt).sum(-1).double()


def test_pickscore_matches_model_card_recipe(tiny) -> None:
    media, prompts = make_media(4, 1, 64, 48, seed=1), make_prompts(4)
    scores = torch.tensor(_pick(tiny).score(media, prompts).scores, dtype=torch.float64)
    ref = torch.exp(torch.tensor(2.0)).double() * _reference_cosine(tiny, media, [p.text for p in prompts])
    assert scores.shape == (4,)
    torch.testing.assert_close(scores, ref, rtol=0, atol=1e-5)
    assert scores.std() > 0.05  # the pairs really differ


def test_pickscore_deterministic_across_loads_and_batch_splits(tiny) -> None:
    media, prompts = make_media(6, 1, 64, 64, seed=2), make_prompts(6)
    a, b = _pick(tiny), _pick(tiny)
    whole = a.score(media, prompts).scores
    assert whole == a.score(media, prompts).scores  # same model, same shapes: bit for bit
    # A second load, or other batch shapes: BLAS chooses kernels by CPU, shape and buffer
    # alignment (measured ~1e-7 apart on an AMD EPYC, equal on others).
    assert b.score(media, prompts).scores == pytest.approx(whole, rel=1e-6, abs=1e-6)
    for size in (2, 3):
        parts = sum((a.score(media[i : i + size], prompts[i : i + size]).scores for i in range(0, 6, size)), [])
        assert parts == pytest.approx(whole, rel=1e-6, abs=1e-6)
    # A lone sample takes BLAS's single-row path: equal to ~1e-6, not bit for bit.
    ones = [a.score(media[i : i + 1], prompts[i : i + 1]).scores[0] for i in range(6)]
    assert ones == pytest.approx(whole, rel=1e-5, abs=1e-5)


def test_per_frame_aggregation(tiny) -> None:
    video, prompts = make_media(2, 3, 48, 48, seed=3), make_prompts(2)
    per_frame = torch.tensor(
        [[_pick(tiny).score(video[:, f : f + 1], prompts).scores[b] for f in range(3)] for b in range(2)]
    )
    for how, ref in [("mean", per_frame.mean(1)), ("min", per_frame.min(1).values), ("max", per_frame.max(1).values)]:
        got = _pick(tiny, aggregate=how).score(video, prompts).scores
        assert got == pytest.approx(ref.tolist(), abs=1e-5), how
    assert per_frame.std(1).min() > 1e-3  # frames differ, so the aggregations differ
    firstlast = _pick(tiny, sample_frames=2).score(video, prompts).scores
    assert firstlast == pytest.approx(per_frame[:, [0, 2]].mean(1).tolist(), abs=1e-5)


def test_video_pickscore_samples_frames_and_reports_terms(tiny) -> None:
    video, prompts = make_media(2, 9, 32, 32, seed=4), make_prompts(2)
    vps = _pick(tiny, VideoPickScore, sample_frames=3)
    out = vps.score(video, prompts)
    chosen = _pick(tiny, aggregate="min").score(video[:, [0, 4, 8]], prompts).scores
    assert set(out.terms) == {"frame_min", "frame_max", "frame_std"}
    assert out.terms["frame_min"] == pytest.approx(chosen, abs=1e-6)
    assert all(lo <= s <= hi for lo, s, hi in zip(out.terms["frame_min"], out.scores, out.terms["frame_max"], strict=True))
    assert VideoPickScore.Config().sample_frames == 8


def test_clipscore_is_w_times_clamped_cosine(tiny) -> None:
    media, prompts = make_media(8, 1, 64, 64, seed=1), make_prompts(8)
    media[4:] //= 4
    cos = torch.tensor(_pick(tiny).score(media, prompts).scores) / torch.exp(torch.tensor(2.0)).item()
    assert (cos > 0.05).any() and (cos < -0.05).any()  # both sides of the clamp are exercised
    opts = {"model": str(tiny.clip), "prefix": ""}
    got = CLIPScore(msgspec.convert(opts, CLIPScore.Config)).score(media, prompts).scores
    assert got == pytest.approx((2.5 * cos.clamp(min=0)).tolist(), abs=1e-5)
    prefixed = CLIPScore(msgspec.convert({"model": str(tiny.clip)}, CLIPScore.Config)).score(media, prompts).scores
    assert prefixed != got  # "A photo depicts " is prepended by default, as in the paper


def test_aesthetic_is_head_of_normalized_embedding(tiny) -> None:
    media = make_media(4, 1, 64, 64, seed=6)
    scorer = Aesthetic(msgspec.convert({"model": str(tiny.clip), "head": str(tiny.head)}, Aesthetic.Config))
    got = scorer.score(media, make_prompts(4)).scores
    processor = CLIPProcessor.from_pretrained(str(tiny.clip), local_files_only=True)
    model = CLIPModel.from_pretrained(str(tiny.clip), local_files_only=True).eval()
    head = aesthetic_head(16).eval()
    head.load_state_dict(torch.load(tiny.head, weights_only=True))
    with torch.no_grad():
        emb = model.get_image_features(**processor(images=[Image.fromarray(m.numpy()) for m in media[:, 0]], return_tensors="pt"))
        emb = getattr(emb, "pooler_output", emb)
        ref = head(emb / emb.norm(dim=-1, keepdim=True))[:, 0]
    assert got == pytest.approx(ref.tolist(), abs=1e-5)
    split = scorer.score(media[:2], make_prompts(2)).scores + scorer.score(media[2:], make_prompts(2)).scores
    assert split == pytest.approx(got, rel=1e-6, abs=1e-6)  # other batch shapes: ~1e-7 on some CPUs


def test_aesthetic_rejects_a_head_of_the_wrong_size(tiny, tmp_path) -> None:
    from unirl_stream.rewards.testing import save_aesthetic_head

    bad = save_aesthetic_head(tmp_path / "h.pth", embed_dim=768)
    with pytest.raises(UserInputError, match=r"options\.head: .* not an aesthetic MLP head for a 16-dim"):
        Aesthetic(msgspec.convert({"model": str(tiny.clip), "head": str(bad)}, Aesthetic.Config))


def test_missing_weights_are_a_clear_user_error(tiny) -> None:
    with pytest.raises(UserInputError, match=r"options\.model: cannot load CLIP model 'nobody/no-such-model' from local files.*huggingface-cli download"):
        _pick(tiny, model="nobody/no-such-model")
    with pytest.raises(UserInputError, match=r"options\.head: no file at"):
        Aesthetic(msgspec.convert({"model": str(tiny.clip), "head": "/nonexistent/head.pth"}, Aesthetic.Config))

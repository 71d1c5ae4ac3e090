"""OCR reward with the real offline engine (Debian tesseract-ocr via pytesseract)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from unirl_stream.api import Prompt, UserInputError
from unirl_stream.rewards.ocr import OCRConfig, OCRReward, levenshtein, target_text, text_reward

needs_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="apt-get install -y tesseract-ocr tesseract-ocr-eng"
)


def render(text: str, w: int = 320, h: int = 96) -> torch.Tensor:
    """Black text on white, Pillow's bundled FreeType font at 36 px -> uint8 [H, W, 3]."""
    img = Image.new("RGB", (w, h), "white")
    ImageDraw.Draw(img).text((12, 24), text, fill="black", font=ImageFont.load_default(size=36))
    return torch.from_numpy(np.array(img))


def test_levenshtein_and_reward_formula() -> None:
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "abc") == 0
    assert text_reward("Hello World\n", "hello world") == 1.0  # case and spaces ignored
    assert text_reward("helo world", "hello world") == pytest.approx(1 - 1 / 10)
    assert text_reward("something else entirely", "hi") == 0.0  # distance capped at len(target)
    assert text_reward("Hello", "hello", ignore_case=False) == pytest.approx(0.8)


def test_target_text_sources() -> None:
    assert target_text(Prompt(id="a:0", text='A neon sign that says "OPEN" at night')) == "OPEN"
    assert target_text(Prompt(id="a:1", text="\u201cCAFE\u201d and \"BAR\" signs")) == "CAFE BAR"
    assert target_text(Prompt(id="a:2", text='says "x"', extra={"text": "override"})) == "override"
    with pytest.raises(UserInputError, match=r"prompt a:3 has no target text.*'text' field"):
        target_text(Prompt(id="a:3", text="a sign with no quotes"))


@needs_tesseract
def test_right_text_scores_clearly_higher_than_wrong_text() -> None:
    words = ["HELLO WORLD", "OPEN 24 HOURS", "Coffee Shop"]
    media = torch.stack([render(t) for t in words])[:, None]  # [3, 1, 96, 320, 3]
    scorer = OCRReward()
    right = scorer.score(media, [Prompt(id=f"o:{i}", text=f'A sign that says "{t}"') for i, t in enumerate(words)])
    wrong_words = ["GOODBYE MOON", "CLOSED", "Tea House"]
    wrong = scorer.score(media, [Prompt(id=f"o:{i}", text=f'a sign: "{t}"') for i, t in enumerate(wrong_words)])
    assert min(right.scores) >= 0.9
    assert max(wrong.scores) <= 0.3
    near = scorer.score(media[:1], [Prompt(id="o:9", text="x", extra={"text": "HELLO WORD"})]).scores[0]
    assert 0.8 <= near < 1.0  # one edit away: partial credit


@needs_tesseract
def test_ocr_frame_aggregation_and_workers() -> None:
    blank = torch.full((96, 320, 3), 255, dtype=torch.uint8)
    video = torch.stack([render("STOP"), blank, render("STOP")])[None]  # text missing in frame 1
    prompt = [Prompt(id="v:0", text='a "STOP" sign')]
    mean = OCRReward(OCRConfig(workers=2)).score(video, prompt).scores[0]
    worst = OCRReward(OCRConfig(aggregate="min")).score(video, prompt).scores[0]
    assert mean == pytest.approx(2 / 3, abs=0.05)
    assert worst == 0.0


def test_unknown_tesseract_language_is_a_user_error() -> None:
    if shutil.which("tesseract") is None:
        pytest.skip("tesseract not installed")
    with pytest.raises(UserInputError, match=r"options\.lang: tesseract has no \['klingon'\]"):
        OCRReward(OCRConfig(lang="eng+klingon"))


def test_got_engine_runs_through_its_real_loader(tmp_path) -> None:
    """GOT-OCR-2.0 (the GPU option) with a tiny random model: AutoProcessor +
    AutoModelForImageTextToText from disk, greedy generation, one text per frame,
    deterministic and independent of how the batch is split. (Random weights read no
    text; the reward formula is tested above with tesseract.)"""
    from unirl_stream.rewards.testing import save_tiny_got

    folder = save_tiny_got(tmp_path / "got")
    cfg = OCRConfig(engine="got", got_model=str(folder), max_new_tokens=6, device="cpu")
    scorer = OCRReward(cfg)
    video = torch.stack([render("STOP", 128, 64), render("GO", 128, 64)])[None].expand(2, 2, 64, 128, 3).clone()
    video[1] = 255 - video[1]
    prompts = [Prompt(id="g:0", text='"STOP"'), Prompt(id="g:1", text='"GO"')]
    out = scorer.score(video, prompts)
    texts = list(scorer.last_texts)
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
    assert all(0.0 <= s <= 1.0 for s in out.scores)
    assert OCRReward(cfg).score(video, prompts).scores == out.scores
    scorer.score(video[1:], prompts[1:])
    assert scorer.last_texts == texts[2:]
    with pytest.raises(UserInputError, match=r"options\.got_model: cannot load GOT-OCR-2\.0 model"):
        OCRReward(OCRConfig(engine="got", got_model=str(tmp_path / "missing"), device="cpu"))

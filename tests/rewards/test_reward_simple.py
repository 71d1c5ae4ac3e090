"""Frame selection/aggregation, media checks, brightness, JPEG, config decoding, cheap imports."""

from __future__ import annotations

import subprocess
import sys

import msgspec
import pytest
import torch
from reward_helpers import make_prompts

from unirl_stream import registry
from unirl_stream.api import Prompt, UserInputError
from unirl_stream.rewards.base import frame_indices
from unirl_stream.rewards.jpeg import JpegCompressibility, JpegIncompressibility
from unirl_stream.rewards.simple import Brightness


def test_frame_indices() -> None:
    assert frame_indices(9, 0) == list(range(9))
    assert frame_indices(9, 4) == [0, 3, 5, 8]
    assert frame_indices(9, 2) == [0, 8]
    assert frame_indices(9, 1) == [4]
    assert frame_indices(3, 5) == [0, 1, 2]


def _levels_video() -> torch.Tensor:
    """One sample, 3 flat frames at 0, 255, 51 -> brightness 0, 1, 0.2."""
    v = torch.zeros(1, 3, 8, 8, 3, dtype=torch.uint8)
    v[0, 1] = 255
    v[0, 2] = 51
    return v


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, 0.4),
        ({"aggregate": "min"}, 0.0),
        ({"aggregate": "max"}, 1.0),
        ({"sample_frames": 2}, 0.1),  # frames 0 and 2
        ({"sample_frames": 1}, 1.0),  # the middle frame
    ],
)
def test_brightness_frame_aggregation(options: dict, expected: float) -> None:
    scorer = Brightness(msgspec.convert(options, Brightness.Config))
    out = scorer.score(_levels_video(), [Prompt(id="a:0", text="x")])
    assert out.scores == pytest.approx([expected], abs=1e-12)


def test_brightness_batch_split_is_exact() -> None:
    g = torch.Generator().manual_seed(3)
    media = torch.randint(0, 256, (5, 2, 16, 16, 3), generator=g, dtype=torch.uint8)
    scorer = Brightness()
    whole = scorer.score(media, make_prompts(5)).scores
    parts = scorer.score(media[:2], make_prompts(2)).scores + scorer.score(media[2:], make_prompts(3)).scores
    assert whole == parts
    assert whole[0] == pytest.approx(media[0].double().mean().item() / 255, abs=1e-12)


def test_media_checks_are_clear() -> None:
    scorer = Brightness()
    with pytest.raises(UserInputError, match=r"uint8 \[B, F, H, W, 3\].*float32 \[1, 8, 8, 3\]"):
        scorer.score(torch.zeros(1, 8, 8, 3), make_prompts(1))
    with pytest.raises(UserInputError, match="2 media samples but 1 prompts"):
        scorer.score(torch.zeros(2, 1, 8, 8, 3, dtype=torch.uint8), make_prompts(1))


def test_jpeg_flat_is_more_compressible_than_noise() -> None:
    g = torch.Generator().manual_seed(0)
    flat = torch.full((1, 1, 64, 64, 3), 128, dtype=torch.uint8)
    noise = torch.randint(0, 256, (1, 1, 64, 64, 3), generator=g, dtype=torch.uint8)
    media = torch.cat([flat, noise])
    comp = JpegCompressibility().score(media, make_prompts(2)).scores
    incomp = JpegIncompressibility().score(media, make_prompts(2)).scores
    assert comp[0] > comp[1] + 3.0  # 64x64 noise at q95 is ~5 kB, flat grey < 1 kB
    assert 0 < incomp[0] < 1.0 < 4.0 < incomp[1]
    assert comp == [-x for x in incomp]


def test_jpeg_quality_option_changes_size() -> None:
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (1, 1, 64, 64, 3), generator=g, dtype=torch.uint8)
    q95 = JpegIncompressibility().score(noise, make_prompts(1)).scores[0]
    q50 = JpegIncompressibility(JpegIncompressibility.Config(quality=50)).score(noise, make_prompts(1)).scores[0]
    assert q50 < q95


def test_options_decode_through_registry_with_clear_errors() -> None:
    cls = registry.load("rewards", "jpeg_compressibility")
    assert cls is JpegCompressibility
    cfg = registry.decode_options(cls, {"aggregate": "min", "quality": 80}, "r.toml: reward[0].options")
    assert (cfg.aggregate, cfg.quality, cfg.batch_size) == ("min", 80, 64)
    with pytest.raises(UserInputError, match=r"reward\[0\]\.options\.qualty: unknown key"):
        registry.decode_options(cls, {"qualty": 80}, "r.toml: reward[0].options")
    with pytest.raises(UserInputError, match=r"options\.aggregate"):
        registry.decode_options(cls, {"aggregate": "median"}, "r.toml: reward[0].options")
    aesthetic = registry.load("rewards", "aesthetic")
    with pytest.raises(UserInputError, match=r"options\.head: required key missing"):
        registry.decode_options(aesthetic, {}, "r.toml: reward[0].options")


def test_every_builtin_registers_and_imports_without_torch() -> None:
    """Recipe validation loads each plugin class and decodes its options: that must not
    import torch or transformers (seconds per process)."""
    code = (
        "import sys\n"
        "from unirl_stream import registry\n"
        "for n in registry.names('rewards'):\n"
        "    cls = registry.load('rewards', n)\n"
        "    assert hasattr(cls, 'Config'), n\n"
        "heavy = [m for m in ('torch', 'transformers', 'PIL', 'pytesseract') if m in sys.modules]\n"
        "print(sorted(registry.names('rewards')), heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    names, heavy = out.stdout.strip().rsplit("] ", 1)
    for n in ("aesthetic", "brightness", "clipscore", "hpsv2", "jpeg_compressibility",
              "jpeg_incompressibility", "ocr", "pickscore", "remote", "video_pickscore"):
        assert f"'{n}'" in names
    assert heavy == "[]"


def test_builtins_satisfy_the_scorer_protocol() -> None:
    from unirl_stream.api import Scorer
    from unirl_stream.rewards.remote import RemoteReward

    for scorer in (Brightness(), JpegCompressibility(), RemoteReward(RemoteReward.Config(url="http://127.0.0.1:9"))):
        assert isinstance(scorer, Scorer)
        assert scorer.device == "cpu" and scorer.batch_size >= 1 and scorer.name
    remote = RemoteReward(RemoteReward.Config(url="http://127.0.0.1:9", batch_size=4, concurrency=3))
    assert remote.batch_size == 12  # a reward set hands it enough for 3 requests in flight
    with pytest.raises(msgspec.ValidationError, match="http://HOST:PORT"):
        msgspec.convert({"url": "127.0.0.1:9"}, RemoteReward.Config)

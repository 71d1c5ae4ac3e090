"""Tiny random-weight reward models on disk, built once per test session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from unirl_stream.rewards import testing


class TinyModels(msgspec.Struct):
    clip: Path
    head: Path
    hps_checkpoint: Path
    hps_clip: Path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    root = tmp_path_factory.mktemp("tiny_rewards")
    clip = testing.save_tiny_clip(root / "clip", seed=0)
    head = testing.save_aesthetic_head(root / "aesthetic_head.pth", embed_dim=16, seed=0)
    ckpt, hps_clip = testing.save_tiny_hps(root / "hps", seed=1)
    return TinyModels(clip, head, ckpt, hps_clip)


@pytest.fixture(scope="session")
def tiny_imagereward(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The imagereward scorer's options for a tiny random ImageReward on disk."""
    root = testing.save_tiny_imagereward(tmp_path_factory.mktemp("tiny_imagereward"), seed=3)
    return {"checkpoint": str(root / "ImageReward.pt"), "med_config": str(root / "med_config.json"),
            "tokenizer": str(root / "tokenizer")}


@pytest.fixture(scope="session")
def tiny_qwen25_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL folder (tokenizer + chat template, image processor, model)."""
    from unirl_stream.rewards.testing_vlm import save_tiny_qwen_vl

    return save_tiny_qwen_vl(tmp_path_factory.mktemp("tiny_qwen25_vl"), seed=4)


@pytest.fixture(scope="session")
def tiny_hpsv3(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The hpsv3 scorer's options for a tiny Qwen2-VL base + HPSv3-layout checkpoint."""
    from unirl_stream.rewards.testing_vlm import save_tiny_hpsv3

    base, ckpt = save_tiny_hpsv3(tmp_path_factory.mktemp("tiny_hpsv3"), seed=5)
    return {"base": str(base), "checkpoint": str(ckpt), "pixels": 56 * 56, "dtype": "float32"}


@pytest.fixture(scope="session")
def tiny_geneval(tmp_path_factory: pytest.TempPathFactory, tiny: TinyModels) -> dict[str, str]:
    """The geneval scorer's options: a tiny random OWLv2 detector and the tiny CLIP."""
    owl = testing.save_tiny_owlv2(tmp_path_factory.mktemp("tiny_owlv2"), seed=6)
    return {"detector": str(owl), "color_model": str(tiny.clip), "threshold": 0.5, "counting_threshold": 0.6}


@pytest.fixture(scope="session")
def tiny_videoalign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The videoalign scorer's options for a tiny Qwen2-VL base + sharded VideoAlign checkpoint."""
    from unirl_stream.rewards.testing_vlm import save_tiny_videoalign

    base, ckpt = save_tiny_videoalign(tmp_path_factory.mktemp("tiny_videoalign"), seed=7)
    return {"base": str(base), "checkpoint": str(ckpt), "dtype": "float32", "max_pixels": 56 * 56, "sample_frames": 4}

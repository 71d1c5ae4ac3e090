"""Shared helpers of the reward tests (media, prompts)."""

from __future__ import annotations

import torch

from unirl_stream.api import Prompt


def make_media(b: int, f: int = 1, h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    """uint8 [B, F, H, W, 3]: noise over a per-sample gradient (varied, not all noise)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 96, (b, f, h, w, 3), generator=g, dtype=torch.int32)
    ramp = torch.linspace(0, 159, w, dtype=torch.float32).round().to(torch.int32)
    base = ramp.view(1, 1, 1, w, 1) * torch.rand(b, f, 1, 1, 3, generator=g)
    return (noise + base.to(torch.int32)).clamp(0, 255).to(torch.uint8)


TEXTS = ["the cat", "a red dog", "hello world", "the dog on a red cat"]


def make_prompts(b: int) -> list[Prompt]:
    return [Prompt(id=f"t:{i}", text=TEXTS[i % len(TEXTS)]) for i in range(b)]

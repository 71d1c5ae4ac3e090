"""HPS v2 / v2.1 (Wu et al. 2023), loaded into transformers' CLIPModel.

Reference (``hpsv2.score``): an open_clip ViT-H-14 whose weights are replaced by the HPS
checkpoint's ``state_dict``; images go through open_clip's validation transform with
``resize_longest_max=True`` (bicubic resize of the longest side to 224, black padding to a
square, OpenAI mean/std); text through open_clip's tokenizer (the CLIP BPE, 77 tokens);
the score is the cosine of the normalized image and text features (no logit scale),
about 0.2-0.35 for real images.

open_clip needs torchvision, which cannot be installed beside transformers here, so the
checkpoint is mapped (``openclip.openclip_to_hf``) into a CLIPModel built from the
ViT-H-14 config of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (the base model HPS was
fine-tuned from), whose tokenizer is the same CLIP BPE. The eos-pooled text feature is the
same with transformers' padding mask as with open_clip's causal-only mask, because the
end-of-text token attends only to tokens before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from unirl_stream.api import Prompt, UserInputError
from unirl_stream.rewards.base import DifferentiableFrameScorer, FrameOptions, resolve_device
from unirl_stream.rewards.pickscore import CLIP_H

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from unirl_stream.rewards.clip_common import Rounding


class HPSv2Config(FrameOptions, kw_only=True, forbid_unknown_fields=True):
    checkpoint: str = "xswu/HPSv2/HPS_v2.1_compressed.pt"
    """HPS checkpoint: local path, or owner/repo/file in the local HF cache."""
    clip: str = CLIP_H
    """CLIP-H config + tokenizer (hub id or local folder)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


def load_hps_model(checkpoint: str, clip: str, device: str, dtype: str) -> tuple[Any, Any]:
    """(CLIPModel with the HPS weights, tokenizer)."""
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from unirl_stream.rewards.clip_common import _missing, resolve_file, torch_dtype
    from unirl_stream.rewards.openclip import MappingError, check_complete, openclip_to_hf

    try:
        config = CLIPConfig.from_pretrained(clip, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(clip, local_files_only=True)
    except (OSError, ValueError) as e:
        raise _missing("hpsv2", "clip", "CLIP config/tokenizer", clip, e) from None
    file = resolve_file(checkpoint, "hpsv2", "checkpoint")
    try:
        blob = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of many kinds: name the file
        raise UserInputError(f"reward hpsv2: options.checkpoint: cannot read {file}: {e}") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise UserInputError(f"reward hpsv2: options.checkpoint: {file} holds no state dict")
    with torch.device("meta"):
        expected = CLIPModel(config).state_dict()
    try:
        mapped = openclip_to_hf(state)
        check_complete(mapped, expected)
    except MappingError as e:
        raise UserInputError(f"reward hpsv2: options.checkpoint: {file}: {e}") from None
    model = CLIPModel.from_pretrained(
        None, config=config, state_dict=mapped, dtype=torch_dtype(dtype)
    )
    return model.eval().requires_grad_(False).to(device), tokenizer


class HPSv2(DifferentiableFrameScorer):
    name: ClassVar[str] = "hpsv2"
    Config: ClassVar[type[HPSv2Config]] = HPSv2Config

    def __init__(self, config: HPSv2Config | None = None) -> None:
        super().__init__(config)
        from unirl_stream.rewards.clip_common import (
            OPENAI_CLIP_MEAN,
            OPENAI_CLIP_STD,
            ImageGeometry,
        )

        cfg = self.config
        self.device = resolve_device(cfg.device)
        self.model, self.tokenizer = load_hps_model(cfg.checkpoint, cfg.clip, self.device, cfg.dtype)
        side = int(self.model.config.vision_config.image_size)
        # HPS passes image_mean=None to open_clip: the OpenAI CLIP statistics.
        self.geometry = ImageGeometry(side, (side, side), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, mode="pad")

    def score_frames(
        self, frames: torch.Tensor, prompts: list[Prompt], rounding: Rounding = "uint8"
    ) -> torch.Tensor:
        from unirl_stream.rewards.clip_common import frame_text_cosine

        texts = [p.text for p in prompts]
        return frame_text_cosine(
            self.model, self.tokenizer, self.geometry, frames, texts, self.device, rounding
        )

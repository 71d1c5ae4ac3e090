"""Qwen2-VL / Qwen2.5-VL plumbing shared by ``vlm_judge`` and ``hpsv3``.

Loading: the tokenizer (with its chat template), the image processor and the model, each
``from_pretrained`` on a local folder or a hub id in the local cache (``local_files_only``).

Inputs: what ``Qwen2_5_VLProcessor`` does, done here because that class insists on its
video processor, which needs torchvision (not installable beside the CPU torch): the chat
template renders one user turn (image, then text), the image processor (the PIL one, the
reference path) gives ``pixel_values`` and each image's patch grid, and every
``<|image_pad|>`` is repeated ``t * h * w / merge_size**2`` times, exactly as the processor
expands it, and ``mm_token_type_ids`` marks the image tokens (without it transformers
silently falls back to 1-D positions). Prompts are left-padded, so the last position of every row is the next token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from unirl_stream.api import UserInputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

IMAGE_PAD = "<|image_pad|>"


class QwenVL:
    """A loaded Qwen-VL model with its tokenizer and image processor."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, device: str,
                 min_pixels: int = 0, max_pixels: int = 0) -> None:
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.device = device
        size = image_processor.size
        # 0 keeps the processor's bounds; the real 7B default (12.8 MP) is far too slow for RL
        self.size = {"shortest_edge": min_pixels or int(size.shortest_edge),
                     "longest_edge": max_pixels or int(size.longest_edge)}
        self.tokenizer.padding_side = "left"

    def inputs(self, images: Sequence[Any], texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """One user turn per (uint8 [H, W, 3] image, text), left-padded, on the device."""
        messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}] for t in texts]
        rendered = [self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                    for m in messages]
        pixels = self.image_processor(images=list(images), size=self.size, return_tensors="pt")
        merge = int(self.image_processor.merge_size) ** 2
        expanded = []
        for text, grid in zip(rendered, pixels["image_grid_thw"], strict=True):
            if text.count(IMAGE_PAD) != 1:
                raise UserInputError(f"the chat template rendered {text.count(IMAGE_PAD)} image pads, expected 1")
            expanded.append(text.replace(IMAGE_PAD, IMAGE_PAD * (int(grid.prod()) // merge)))
        tok = self.tokenizer(expanded, padding=True, return_tensors="pt", add_special_tokens=False)
        dtype = next(self.model.parameters()).dtype
        ids = tok["input_ids"]
        # 1 marks image tokens, as the processor returns it: M-RoPE positions need it
        kinds = (ids == self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)).int()
        return {"input_ids": ids.to(self.device), "attention_mask": tok["attention_mask"].to(self.device),
                "mm_token_type_ids": kinds.to(self.device),
                "pixel_values": pixels["pixel_values"].to(self.device, dtype),
                "image_grid_thw": pixels["image_grid_thw"].to(self.device)}

    def single_token(self, text: str, field: str, scorer: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise UserInputError(f"reward {scorer}: options.{field}: {text!r} is {len(ids)} tokens for this "
                                 f"tokenizer; answers are read from one next-token distribution")
        return int(ids[0])


def load_qwen_vl(ref: str, scorer: str, field: str, device: str, dtype: str, cls_name: str,
                 min_pixels: int = 0, max_pixels: int = 0) -> QwenVL:
    """``cls_name``: Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration, ..."""
    import transformers
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

    from unirl_stream.rewards.clip_common import _missing, torch_dtype

    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, local_files_only=True)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(ref, local_files_only=True)
        model = getattr(transformers, cls_name).from_pretrained(ref, local_files_only=True, dtype=torch_dtype(dtype))
    except (OSError, ValueError) as e:
        raise _missing(scorer, field, "Qwen-VL model", ref, e) from None
    if tokenizer.chat_template is None:
        raise UserInputError(f"reward {scorer}: options.{field}: {ref} has no chat template in its tokenizer")
    return QwenVL(model.eval().requires_grad_(False).to(device), tokenizer, image_processor, device,
                  min_pixels, max_pixels)

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
VIDEO_PAD = "<|video_pad|>"


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

    def video_inputs(self, videos: Sequence[Any], texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """One user turn per (uint8 [F, H, W, 3] video, text); F even (pairs of frames).

        Qwen's video processor needs torchvision, so its layout is built from the image
        processor's: an image's patch rows are (C, T, P, P) with its frame repeated over
        the T = 2 temporal slots, in the same spatial order a video uses for each pair of
        frames; slot 0 of frames 2t and 2t + 1 therefore make video patch group t.
        """
        import torch

        messages = [[{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": t}]}] for t in texts]
        rendered = [self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                    for m in messages]
        ip = self.image_processor
        t_patch, p, merge = int(ip.temporal_patch_size), int(ip.patch_size), int(ip.merge_size) ** 2
        rows, grids, expanded = [], [], []
        for video, text in zip(videos, rendered, strict=True):
            if len(video) % t_patch or text.count(VIDEO_PAD) != 1:
                raise UserInputError(f"a video needs a multiple of {t_patch} frames and one video pad in its turn")
            px = ip(images=list(video), size=self.size, return_tensors="pt")
            grid = px["image_grid_thw"][0]
            frames = px["pixel_values"].view(len(video), int(grid.prod()), 3, t_patch, p, p)[:, :, :, 0]
            pairs = frames.view(len(video) // t_patch, t_patch, *frames.shape[1:]).permute(0, 2, 3, 1, 4, 5)
            rows.append(pairs.reshape(-1, 3 * t_patch * p * p))
            grids.append(torch.tensor([len(video) // t_patch, int(grid[1]), int(grid[2])]))
            expanded.append(text.replace(VIDEO_PAD, VIDEO_PAD * (int(grids[-1].prod()) // merge)))
        tok = self.tokenizer(expanded, padding=True, return_tensors="pt", add_special_tokens=False)
        ids = tok["input_ids"]
        kinds = 2 * (ids == self.tokenizer.convert_tokens_to_ids(VIDEO_PAD)).int()  # 2: video, as the processor
        dtype = next(self.model.parameters()).dtype
        return {"input_ids": ids.to(self.device), "attention_mask": tok["attention_mask"].to(self.device),
                "mm_token_type_ids": kinds.to(self.device),
                "pixel_values_videos": torch.cat(rows).to(self.device, dtype),
                "video_grid_thw": torch.stack(grids).to(self.device)}

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


def to_current_names(state: dict[str, Any]) -> dict[str, Any]:
    """Older transformers' Qwen2-VL names (``model.layers``, ``visual``) -> 5.x names."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("visual."):
            key = "model." + key
        elif key.startswith("model.") and not key.startswith(("model.language_model.", "model.visual.")):
            key = "model.language_model." + key[len("model."):]
        out[key] = value
    return out


def read_safetensors(ref: str, scorer: str) -> dict[str, Any]:
    """One safetensors file, or every ``*.safetensors`` shard of a folder."""
    from pathlib import Path

    from safetensors.torch import load_file

    from unirl_stream.rewards.clip_common import _missing, resolve_file

    folder = Path(ref).expanduser()
    if not folder.exists() and len(ref.split("/")) == 2:  # a hub repo of shards, from the local cache
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(ref, local_files_only=True))
        except Exception as e:  # not in the cache: say how to get it
            raise _missing(scorer, "checkpoint", "reward checkpoint", ref, e) from None
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else [resolve_file(ref, scorer, "checkpoint")]
    if not files:
        raise UserInputError(f"reward {scorer}: options.checkpoint: {folder} holds no .safetensors file")
    state: dict[str, Any] = {}
    for f in files:
        try:
            state |= load_file(str(f))
        except Exception as e:  # header/format errors of many kinds: name the file
            raise UserInputError(f"reward {scorer}: options.checkpoint: cannot read {f}: {e}") from None
    return to_current_names(state)


def load_reward_backbone(base: str, checkpoint: str, tokens: list[str], scorer: str, device: str, dtype: str,
                         min_pixels: int = 0, max_pixels: int = 0) -> tuple[QwenVL, dict[str, Any]]:
    """A Qwen2-VL reward model (HPSv3, VideoAlign): config, tokenizer and image processor
    from ``base``, the reward ``tokens`` added to the tokenizer as their training code does,
    every backbone weight from ``checkpoint`` (complete, names checked). Returns the bundle
    and the checkpoint's ``rm_head.*`` tensors (prefix stripped) for the scorer's head."""
    import torch
    from transformers import (
        AutoConfig,
        AutoTokenizer,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    from unirl_stream.rewards.clip_common import _missing, torch_dtype
    from unirl_stream.rewards.openclip import MappingError, check_complete

    try:
        config = AutoConfig.from_pretrained(base, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(base, local_files_only=True)
    except (OSError, ValueError) as e:
        raise _missing(scorer, "base", "Qwen2-VL config/tokenizer", base, e) from None
    tokenizer.add_special_tokens({"additional_special_tokens": tokens})
    state = read_safetensors(checkpoint, scorer)
    head = {k.removeprefix("rm_head."): state.pop(k) for k in [k for k in state if k.startswith("rm_head.")]}
    # the checkpoint's table may have grown for the added tokens (resize_token_embeddings)
    config.text_config.vocab_size = int(state.get("model.language_model.embed_tokens.weight", torch.empty(
        config.text_config.vocab_size, 0)).shape[0])
    with torch.device("meta"):
        expected = Qwen2VLForConditionalGeneration(config).state_dict()
    try:
        check_complete(state, expected)
    except MappingError as e:
        raise UserInputError(f"reward {scorer}: options.checkpoint: {checkpoint} does not fit {base}: {e}") from None
    if max(tokenizer.convert_tokens_to_ids(tokens)) >= config.text_config.vocab_size:
        raise UserInputError(f"reward {scorer}: options.checkpoint: its embedding table has no row for {tokens}")
    model = Qwen2VLForConditionalGeneration.from_pretrained(None, config=config, state_dict=state,
                                                            dtype=torch_dtype(dtype))
    return QwenVL(model.to(device).eval().requires_grad_(False), tokenizer, image_processor, device,
                  min_pixels, max_pixels), head

"""Qwen2-VL / Qwen2.5-VL plumbing shared by ``vlm_judge`` and ``hpsv3``.

Loading: the tokenizer (with its chat template), the image processor and the model, each
``from_pretrained`` on a local folder or a hub id in the local cache (``local_files_only``).

Inputs: what ``Qwen2_5_VLProcessor`` does, done here because that class insists on its
video processor, which needs torchvision (not installable beside the CPU torch), and
because its PIL image processor costs ~26 ms per 512 px image on one host core (likely what
held the 7B scorers to ~20 images/s on an H200; not profiled there): the chat template renders one user turn (image or video, then
text), ``QwenVL.patches`` reproduces the image processor on tensors (batched over frames,
on the scorer's device), every ``<|image_pad|>`` / ``<|video_pad|>`` is repeated
``t * h * w / merge_size**2`` times as the processor expands it, and ``mm_token_type_ids``
marks those tokens (without it transformers silently falls back to 1-D positions). Prompts
are left-padded, so the last position of every row is the next token.
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
        ip = image_processor
        if getattr(ip, "resample", 3) not in (3, None) or not (ip.do_resize and ip.do_rescale and ip.do_normalize):
            raise UserInputError(f"unsupported Qwen-VL image processor settings (resample={ip.resample}, "
                                 f"resize/rescale/normalize={ip.do_resize}/{ip.do_rescale}/{ip.do_normalize}); "
                                 f"expected bicubic and all three on, as the published models")
        size = image_processor.size
        # 0 keeps the processor's bounds; the real 7B default (12.8 MP) is far too slow for RL
        self.size = {"shortest_edge": min_pixels or int(size.shortest_edge),
                     "longest_edge": max_pixels or int(size.longest_edge)}
        self.tokenizer.padding_side = "left"

    def patches(self, frames: Any) -> tuple[torch.Tensor, list[int]]:
        """uint8 [F, H, W, 3] (F = 1: an image; else a video, F a multiple of the temporal
        patch) -> (patch rows [t * h * w, C * T * P * P] on the device, grid [t, h, w]).

        What Qwen2VLImageProcessor does per image, on tensors and batched over frames:
        ``smart_resize`` to the grid, PIL's bicubic (``clip_common.pil_bicubic``: PIL's
        pixels exactly), rescale, normalize, then Qwen's flattening of (t, T, C, h/m, m, P,
        w/m, m, P) into rows of (C, T, P, P) in merge-block order; an image fills the T
        temporal slots with itself. Tests hold it to the PIL processor within 1e-6.
        """
        import torch
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        from unirl_stream.rewards.clip_common import pil_bicubic

        ip = self.image_processor
        p, m, t_patch = int(ip.patch_size), int(ip.merge_size), int(ip.temporal_patch_size)
        x = torch.as_tensor(frames).to(self.device)
        f, h, w = x.shape[0], x.shape[1], x.shape[2]
        if f > 1 and f % t_patch:
            raise UserInputError(f"a video needs a multiple of {t_patch} frames, got {f}")
        nh, nw = smart_resize(h, w, p * m, min_pixels=self.size["shortest_edge"], max_pixels=self.size["longest_edge"])
        x = pil_bicubic(x.permute(0, 3, 1, 2).double().contiguous(), nh, nw) * float(ip.rescale_factor)
        mean = torch.tensor(ip.image_mean, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(ip.image_std, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
        x = ((x - mean) / std).float()
        if f == 1:
            x = x.expand(t_patch, -1, -1, -1)
        g, gh, gw = x.shape[0] // t_patch, nh // p, nw // p
        x = x.reshape(g, t_patch, 3, gh // m, m, p, gw // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return x.reshape(g * gh * gw, 3 * t_patch * p * p), [g, gh, gw]

    def inputs(self, images: Sequence[Any], texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """One user turn per (uint8 [H, W, 3] image, text), left-padded, on the device."""
        out = self._turns([im[None] for im in images], texts, "image", IMAGE_PAD, 1)
        out["pixel_values"], out["image_grid_thw"] = out.pop("pixels"), out.pop("grids")
        return out

    def video_inputs(self, videos: Sequence[Any], texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """One user turn per (uint8 [F, H, W, 3] video, text); F a multiple of 2."""
        out = self._turns(list(videos), texts, "video", VIDEO_PAD, 2)
        out["pixel_values_videos"], out["video_grid_thw"] = out.pop("pixels"), out.pop("grids")
        return out

    def _turns(self, media: list[Any], texts: Sequence[str], kind: str, pad: str, type_id: int) -> dict[str, Any]:
        import torch

        rendered = [self.tokenizer.apply_chat_template(
            [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": t}]}],
            tokenize=False, add_generation_prompt=True) for t in texts]
        merge = int(self.image_processor.merge_size) ** 2
        rows, grids, expanded = [], [], []
        for item, text in zip(media, rendered, strict=True):
            if text.count(pad) != 1:
                raise UserInputError(f"the chat template rendered {text.count(pad)} {pad} tokens, expected 1")
            r, grid = self.patches(item)
            rows.append(r)
            grids.append(grid)
            expanded.append(text.replace(pad, pad * (grid[0] * grid[1] * grid[2] // merge)))
        tok = self.tokenizer(expanded, padding=True, return_tensors="pt", add_special_tokens=False)
        ids = tok["input_ids"]
        # marks the media tokens (1 image, 2 video), as the processor returns it: M-RoPE needs it
        kinds = type_id * (ids == self.tokenizer.convert_tokens_to_ids(pad)).int()
        dtype = next(self.model.parameters()).dtype
        return {"input_ids": ids.to(self.device), "attention_mask": tok["attention_mask"].to(self.device),
                "mm_token_type_ids": kinds.to(self.device), "pixels": torch.cat(rows).to(dtype),
                "grids": torch.tensor(grids, device=self.device)}

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

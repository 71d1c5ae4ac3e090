"""ImageReward (Xu et al. 2023): BLIP image-text matching features + an MLP, normalized.

Reference (THUDM/ImageReward ``ImageReward.score``): the prompt is BERT-tokenized
(``bert-base-uncased`` plus BLIP's ``[DEC]``/``[ENC]`` tokens) to exactly 35 tokens, the
image goes through BLIP's ViT (``Resize(224, bicubic)``, ``CenterCrop(224)``, OpenAI CLIP
mean/std), the BERT text encoder cross-attends to every image token, and the ``[CLS]``
state feeds a 5-layer MLP with no activations (768-1024-128-64-16-1; the published code
has its ReLUs commented out); the score is ``(mlp - 0.16717362830052426) / 1.0333394966054072``.

We read the published ``ImageReward.pt`` (BLIP key names) into transformers' BLIP modules
(``BlipVisionModel`` + ``BlipTextModel``), whose layouts match BLIP's one to one; the
ViT's size is read from the checkpoint's shapes and the text encoder's from
``med_config.json``, the file the reference reads. Departure: nothing, except that
preprocessing runs batched on tensors (``clip_common``), equal to PIL's pixels.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from unirl_stream.api import Prompt, UserInputError
from unirl_stream.rewards.base import FrameOptions, FrameScorer, resolve_device

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

MEAN, STD = 0.16717362830052426, 1.0333394966054072  # the reference's normalization
MAX_TOKENS = 35  # the reference pads/truncates every prompt to this
HEAD_LAYERS = (0, 2, 4, 6, 7)  # Linear indices in the reference's nn.Sequential (dropouts between)
_VIT_TOP = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding",
            "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
            "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
            "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}
_VIT_BLOCK = {"norm1": "layer_norm1", "attn.qkv": "self_attn.qkv", "attn.proj": "self_attn.projection",
              "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")


class ImageRewardConfig(FrameOptions, kw_only=True, forbid_unknown_fields=True):
    checkpoint: str = "THUDM/ImageReward/ImageReward.pt"
    """ImageReward state dict: local path, or owner/repo/file in the local HF cache."""
    med_config: str = "THUDM/ImageReward/med_config.json"
    """BLIP's BERT config (text encoder size): local path or owner/repo/file."""
    tokenizer: str = "bert-base-uncased"
    """BERT tokenizer: hub id (local HF cache) or local folder; BLIP's two tokens are added."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


def vit_to_hf(state: dict[str, Any]) -> dict[str, Any]:
    """BLIP ``visual_encoder.*`` keys (prefix stripped) -> ``BlipVisionModel`` keys."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key in _VIT_TOP:
            out[_VIT_TOP[key]] = value
        elif (m := _BLOCK_RE.match(key)) and m.group(2) in _VIT_BLOCK:
            out[f"encoder.layers.{m.group(1)}.{_VIT_BLOCK[m.group(2)]}.{m.group(3)}"] = value
        else:
            raise UserInputError(f"reward imagereward: options.checkpoint: unknown ViT key visual_encoder.{key}")
    return out


def _part(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _configs(state: dict[str, Any], med: dict[str, Any], vocab: int) -> tuple[Any, Any]:
    """(BlipVisionConfig from the ViT's shapes, BlipTextConfig from med_config.json)."""
    from transformers import BlipTextConfig, BlipVisionConfig

    vit = _part(state, "blip.visual_encoder.")
    width, patch = int(vit["cls_token"].shape[-1]), int(vit["patch_embed.proj.weight"].shape[-1])
    grid = round((int(vit["pos_embed"].shape[1]) - 1) ** 0.5)
    depth = len({m.group(1) for k in vit if (m := _BLOCK_RE.match(k))})
    if width % 64:  # BLIP's ViTs (B: 768/12, L: 1024/16) use 64-dim heads; shapes do not say
        raise UserInputError(f"reward imagereward: options.checkpoint: ViT width {width} is not a multiple of 64")
    vision = BlipVisionConfig(
        hidden_size=width, intermediate_size=int(vit["blocks.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=depth, num_attention_heads=width // 64,
        image_size=grid * patch, patch_size=patch, layer_norm_eps=1e-6, hidden_act="gelu")
    cross = state["blip.text_encoder.encoder.layer.0.crossattention.self.key.weight"]
    text = BlipTextConfig(
        vocab_size=vocab, hidden_size=med["hidden_size"], intermediate_size=med["intermediate_size"],
        num_hidden_layers=med["num_hidden_layers"], num_attention_heads=med["num_attention_heads"],
        max_position_embeddings=med["max_position_embeddings"], layer_norm_eps=med.get("layer_norm_eps", 1e-12),
        hidden_act=med.get("hidden_act", "gelu"), encoder_hidden_size=int(cross.shape[1]),
        pad_token_id=med.get("pad_token_id", 0))
    return vision, text


def _load_state(ref: str) -> dict[str, Any]:
    import torch

    from unirl_stream.rewards.clip_common import resolve_file

    file = resolve_file(ref, "imagereward", "checkpoint")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle errors of many kinds: name the file
        raise UserInputError(f"reward imagereward: options.checkpoint: cannot read {file}: {e}") from None
    if not isinstance(state, dict) or "blip.visual_encoder.cls_token" not in state:
        raise UserInputError(f"reward imagereward: options.checkpoint: {file} is not an ImageReward state dict")
    return state


def load_tokenizer(ref: str) -> Any:
    """BLIP's tokenizer: BERT plus ``[DEC]`` (bos) and ``[ENC]``, as BLIP's init_tokenizer."""
    from transformers import BertTokenizer

    from unirl_stream.rewards.clip_common import _missing

    try:
        tok = BertTokenizer.from_pretrained(ref, local_files_only=True)
    except (OSError, ValueError) as e:
        raise _missing("imagereward", "tokenizer", "BERT tokenizer", ref, e) from None
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def load_imagereward(cfg: ImageRewardConfig, device: str) -> tuple[Any, Any, Any, Any]:
    """(vision model, text model, head [Linear...], tokenizer), eval mode on ``device``."""
    import torch
    from transformers.models.blip.modeling_blip import BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    from unirl_stream.rewards.clip_common import resolve_file, torch_dtype

    state = _load_state(cfg.checkpoint)
    med = json.loads(resolve_file(cfg.med_config, "imagereward", "med_config").read_text())
    tok = load_tokenizer(cfg.tokenizer)
    vision_cfg, text_cfg = _configs(state, med, len(tok))
    vision, text = BlipVisionModel(vision_cfg), BlipTextModel(text_cfg, add_pooling_layer=False)
    head = torch.nn.Sequential(*[torch.nn.Linear(*state[f"mlp.layers.{i}.weight"].shape[::-1]) for i in HEAD_LAYERS])
    text_state = {k: v for k, v in _part(state, "blip.text_encoder.").items() if not k.endswith("position_ids")}
    head_state = {f"{j}.{p}": state[f"mlp.layers.{i}.{p}"] for j, i in enumerate(HEAD_LAYERS) for p in ("weight", "bias")}
    for module, part, field in ((vision, vit_to_hf(_part(state, "blip.visual_encoder.")), "visual_encoder"),
                                (text, text_state, "text_encoder"), (head, head_state, "mlp")):
        try:
            module.load_state_dict(part, strict=True)
        except RuntimeError as e:
            raise UserInputError(f"reward imagereward: options.checkpoint: {field} does not fit: {' '.join(str(e).split())}") from None
    dtype = torch_dtype(cfg.dtype)
    return (*(m.eval().requires_grad_(False).to(device, dtype) for m in (vision, text, head)), tok)


class ImageReward(FrameScorer):
    name: ClassVar[str] = "imagereward"
    Config: ClassVar[type[ImageRewardConfig]] = ImageRewardConfig

    def __init__(self, config: ImageRewardConfig | None = None) -> None:
        super().__init__(config)
        from unirl_stream.rewards.clip_common import (
            OPENAI_CLIP_MEAN,
            OPENAI_CLIP_STD,
            ImageGeometry,
        )

        self.device = resolve_device(self.config.device)
        self.vision, self.text, self.head, self.tokenizer = load_imagereward(self.config, self.device)
        side = int(self.vision.config.image_size)
        self.geometry = ImageGeometry(side, (side, side), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, center="torchvision")

    def features(self, frames: torch.Tensor, prompts: list[Prompt]) -> torch.Tensor:
        """The text encoder's [CLS] state after cross-attending to each frame: [B * F, D]."""
        import torch

        b, f = frames.shape[:2]
        dtype = next(self.vision.parameters()).dtype
        pixels = self.geometry(frames.reshape(b * f, *frames.shape[2:]), self.device, dtype)
        image = self.vision(pixel_values=pixels).last_hidden_state
        tok = self.tokenizer([p.text for p in prompts], padding="max_length", truncation=True,
                             max_length=MAX_TOKENS, return_tensors="pt")
        ids = tok["input_ids"].to(self.device).repeat_interleave(f, dim=0)
        mask = tok["attention_mask"].to(self.device).repeat_interleave(f, dim=0)
        image_mask = torch.ones(image.shape[:2], dtype=torch.long, device=self.device)
        out = self.text(input_ids=ids, attention_mask=mask, encoder_hidden_states=image,
                        encoder_attention_mask=image_mask, return_dict=True)
        return out.last_hidden_state[:, 0, :]

    def score_frames(self, frames: torch.Tensor, prompts: list[Prompt]) -> torch.Tensor:
        b, f = frames.shape[:2]
        raw = self.head(self.features(frames, prompts)).float().view(b, f)
        return (raw - MEAN) / STD

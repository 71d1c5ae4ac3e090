"""open_clip state dict (ViT-*, standard ``CLIP`` class) -> transformers ``CLIPModel`` keys.

open_clip cannot be installed here (it requires torchvision, which breaks transformers on
these machines), so checkpoints trained with it (HPS v2 / v2.1 on ViT-H-14) are loaded
into transformers' CLIPModel, whose math is the same: pre-LN transformer blocks, a
class-token vision tower with ln_pre/ln_post, a causal text tower pooled at the
end-of-text token, and bias-free projections.

Layout differences handled here:
- attention: open_clip uses ``nn.MultiheadAttention`` with one fused ``in_proj_weight``
  [3W, W] (rows: q, then k, then v) and ``in_proj_bias`` [3W]; transformers has separate
  q_proj/k_proj/v_proj Linear layers.
- projections: open_clip multiplies ``x @ proj`` with proj [W, D]; transformers' Linear
  stores the transpose [D, W].
- positional embeddings are bare parameters in open_clip, ``nn.Embedding`` weights in
  transformers; ``logit_scale`` is log-scale in both.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

# open_clip key (with {i} for the block) -> transformers key; towers are prefixed below.
_BLOCK = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TOP = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",  # sic, transformers' name
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
# Buffers some open_clip versions saved; they carry no weights.
_IGNORED = {"attn_mask", "text.attn_mask"}
_BLOCK_RE = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


class MappingError(ValueError):
    """The state dict is not a standard open_clip ViT CLIP (names the offending keys)."""


def strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a DistributedDataParallel ``module.`` prefix if every key has it."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def openclip_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map every key of an open_clip ViT CLIP state dict; raise MappingError on leftovers."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in strip_prefix(state).items():
        if key in _IGNORED:
            continue
        if key in _TOP:
            out[_TOP[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        elif m := _BLOCK_RE.match(key):
            tower = "vision_model" if m.group(1) else "text_model"
            prefix = f"{tower}.encoder.layers.{m.group(2)}."
            rest = m.group(3)
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]  # weight | bias
                q, k, v = value.chunk(3, dim=0)
                for name, part in (("q", q), ("k", k), ("v", v)):
                    out[f"{prefix}self_attn.{name}_proj.{kind}"] = part.contiguous()
            elif rest in _BLOCK:
                out[prefix + _BLOCK[rest]] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise MappingError(
            f"not a standard open_clip ViT CLIP state dict; unmapped keys: {sorted(unknown)[:8]}"
            f"{' ...' if len(unknown) > 8 else ''}"
        )
    return out


def check_complete(mapped: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Every persistent model key is present with the model's shape, and nothing else."""
    missing = sorted(set(expected) - set(mapped))
    extra = sorted(set(mapped) - set(expected))
    shapes = [
        f"{k}: checkpoint {list(mapped[k].shape)} vs model {list(expected[k].shape)}"
        for k in sorted(set(mapped) & set(expected))
        if mapped[k].shape != expected[k].shape
    ]
    if missing or extra or shapes:
        raise MappingError(
            "checkpoint does not fit the CLIP config: "
            + "; ".join(
                part
                for part in (
                    f"missing {missing[:6]}" if missing else "",
                    f"unexpected {extra[:6]}" if extra else "",
                    f"shape mismatch {shapes[:4]}" if shapes else "",
                )
                if part
            )
        )

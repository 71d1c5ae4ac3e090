"""Tiny random-weight Qwen2.5-VL / Qwen2-VL models with their real processors, saved to disk.

For tests and CPU benchmarks of the VLM-based scorers (``vlm_judge``, ``hpsv3``): nothing
downloads. The tokenizer is byte-level BPE (every byte a token) with a few merges, so that
"Yes", "No", "yes", "no" are single tokens while "10" is two digits, as in Qwen's real
vocabulary (which splits numbers into digits). The chat template reproduces Qwen2-VL's
format for a user turn of images and text. The folder holds what the scorers read: the
tokenizer (with the template), the image processor's ``preprocessor_config.json`` and the
model; transformers' ``Qwen2_5_VLProcessor`` itself needs torchvision (its video
processor), so the scorers do its two steps themselves (``rewards/qwen_vl.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unirl_stream.rewards.testing import _byte_symbols

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
MERGES = [("Y", "e"), ("Ye", "s"), ("N", "o"), ("y", "e"), ("ye", "s"), ("n", "o")]
# Qwen2-VL's chat format for one user turn of an image or a video and text (system prompt
# as the real template's default).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(_byte_symbols())}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=MERGES))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=QWEN_SPECIALS, padding_side="left")




def tiny_qwen_vl_config(tok: Any, kind: str = "qwen2_5_vl") -> Any:
    """A 2-layer text model (head dim 16: M-RoPE sections 2+3+3) and a 2-block vision tower."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    ids = {name: tok.convert_tokens_to_ids(name) for name in QWEN_SPECIALS}
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                tie_word_embeddings=False, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    common = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if kind == "qwen2_5_vl":
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                      fullatt_block_indexes=[1])
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    vision = dict(depth=2, embed_dim=32, hidden_size=32, mlp_ratio=2, num_heads=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    return Qwen2VLConfig(text_config=text, vision_config=vision, **common)


def save_tiny_qwen_vl(folder: Path, seed: int = 0, kind: str = "qwen2_5_vl",
                      min_pixels: int = 56 * 56, max_pixels: int = 112 * 112) -> Path:
    """Model + processor in ``folder`` (``from_pretrained(folder)`` loads both)."""
    import torch
    from transformers import (
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    tok = qwen_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(folder))
    Qwen2VLImageProcessorPil(size={"shortest_edge": min_pixels, "longest_edge": max_pixels}).save_pretrained(str(folder))
    torch.manual_seed(seed)
    cls = Qwen2_5_VLForConditionalGeneration if kind == "qwen2_5_vl" else Qwen2VLForConditionalGeneration
    model = cls(tiny_qwen_vl_config(tok, kind))
    with torch.no_grad():  # HF init draws std 0.02: too flat for logits to differ visibly
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    model.save_pretrained(str(folder))
    return folder


def save_tiny_hpsv3(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """(``base/``: a tiny Qwen2-VL folder, ``HPSv3.safetensors``): the backbone under the
    older transformers names (``model.layers.*``, ``visual.*``, as the published file) with
    ``<|Reward|>``'s row trained-looking, plus a ranknet ``rm_head`` of random weights."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2VLForConditionalGeneration

    base = save_tiny_qwen_vl(folder / "base", seed=seed, kind="qwen2_vl", min_pixels=56 * 56, max_pixels=56 * 56)
    model = Qwen2VLForConditionalGeneration.from_pretrained(str(base), local_files_only=True)
    state: dict[str, Any] = {}
    for key, value in model.state_dict().items():
        if key.startswith("model.visual."):
            key = key.removeprefix("model.")
        elif key.startswith("model.language_model."):
            key = "model." + key.removeprefix("model.language_model.")
        state[key] = value.contiguous()
    # The tiny tokenizer's next id is <|Reward|>'s: the checkpoint's table grows a row for it
    # (resize_token_embeddings; the real 7B table's 152064 rows already cover it), while the
    # base config keeps the old size: the loader must take the size from the checkpoint.
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        state[key] = torch.cat([state[key], torch.randn(1, state[key].shape[1], generator=torch.Generator().manual_seed(seed))])
    g = torch.Generator().manual_seed(seed + 1)
    d = model.config.text_config.hidden_size
    for i, (n_in, n_out) in zip((0, 3, 5), ((d, 24), (24, 16), (16, 2)), strict=True):
        state[f"rm_head.{i}.weight"] = torch.randn(n_out, n_in, generator=g) * 0.3
        state[f"rm_head.{i}.bias"] = torch.randn(n_out, generator=g) * 0.1
    ckpt = folder / "HPSv3.safetensors"
    save_file(state, str(ckpt))
    return base, ckpt


def save_tiny_videoalign(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """(``base/``: a tiny Qwen2-VL folder, ``ckpt/``: two safetensors shards under the
    older names, the table grown by VideoAlign's three tokens, a bias-free ``rm_head``)."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2VLForConditionalGeneration

    base = save_tiny_qwen_vl(folder / "base", seed=seed, kind="qwen2_vl", min_pixels=28 * 28, max_pixels=56 * 56)
    model = Qwen2VLForConditionalGeneration.from_pretrained(str(base), local_files_only=True)
    g = torch.Generator().manual_seed(seed + 2)
    state: dict[str, Any] = {}
    for key, value in model.state_dict().items():
        key = key.removeprefix("model.") if key.startswith("model.visual.") else key.replace("language_model.", "")
        state[key] = value.contiguous()
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        state[key] = torch.cat([state[key], torch.randn(3, state[key].shape[1], generator=g)])
    state["rm_head.weight"] = torch.randn(3, model.config.text_config.hidden_size, generator=g) * 0.3
    keys = sorted(state)
    (folder / "ckpt").mkdir(parents=True, exist_ok=True)
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
        save_file({k: state[k] for k in part}, str(folder / "ckpt" / f"model-0000{i + 1}-of-00002.safetensors"))
    return base, folder / "ckpt"

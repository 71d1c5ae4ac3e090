"""The tiny Qwen-Image: the real ``QwenImagePipeline`` architecture with random weights.

Real classes at tiny width: ``QwenImageTransformer2DModel`` (2 blocks, 2 x 16 heads, RoPE axes
4 + 6 + 6), ``AutoencoderKLQwenImage`` (16 latent channels, x8), and a
``Qwen2_5_VLForConditionalGeneration`` text encoder (2 text layers with multimodal RoPE, a
1-block vision tower that text-only prompts never run) with an offline word-level tokenizer.
The pipeline wraps every prompt in a chat template and drops its first 34 tokens (the system
prompt, ``prompt_template_encode_start_idx``); the tokenizer keeps newlines and punctuation
as tokens so the template's prefix is 34 tokens here too, as with the real Qwen tokenizer.
The scheduler config is Qwen-Image's own: dynamic (exponential) shift, ``shift_terminal``.
"""

from __future__ import annotations

from typing import Any

from unirl_stream.models.tiny import VOCAB, zero_biases

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>"]
_TEMPLATE_WORDS = ("system describe image by detailing color shape size texture quantity spatial "
                   "relationships objects background user assistant").split()
QWEN_VOCAB: dict[str, int] = {w: i for i, w in enumerate(
    SPECIAL + ["<unk>"] + sorted({*(w for w in VOCAB if not w.startswith("<")), *_TEMPLATE_WORDS, ",", ":", "\n"}))}
TEXT_DIM = 32


def tiny_config(layout: str = "qwen_image") -> dict[str, Any]:
    """Every constructor argument of the tiny Qwen-Image (what the cache hash covers)."""
    ids = {"image_token_id": QWEN_VOCAB["<|image_pad|>"], "video_token_id": QWEN_VOCAB["<|video_pad|>"],
           "vision_start_token_id": QWEN_VOCAB["<|vision_start|>"], "vision_end_token_id": QWEN_VOCAB["<|vision_end|>"]}
    return {
        "layout": layout,
        "seed": 0,
        "vocab": QWEN_VOCAB,
        "text_encoder": {
            **ids,
            "text_config": {"vocab_size": len(QWEN_VOCAB), "hidden_size": TEXT_DIM, "intermediate_size": 64,
                            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                            "max_position_embeddings": 256,
                            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}},
            "vision_config": {"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2,
                              "out_hidden_size": TEXT_DIM, "fullatt_block_indexes": [0]},
        },
        "transformer": {"patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 2,
                        "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": TEXT_DIM,
                        "axes_dims_rope": [4, 6, 6]},
        "vae": {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1, "attn_scales": [],
                "temperal_downsample": [False, True, True], "latents_mean": [0.0] * 16, "latents_std": [1.0] * 16},
        "vae_biases": "zero",  # see tiny.zero_biases
        # Qwen-Image's published scheduler config
        "scheduler": {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 8192, "max_shift": 0.9,
                      "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": 0.02,
                      "time_shift_type": "exponential", "use_dynamic_shifting": True},
    }


def build_tokenizer(vocab: dict[str, int] | None = None, rewrites: dict[str, str] | None = None) -> Any:
    """Offline word-level Qwen-style tokenizer (``vocab``: QWEN_VOCAB or a superset of it;
    ``rewrites``: regex -> text applied after lowercasing, to mimic a BPE's splits)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=vocab or QWEN_VOCAB, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), *(normalizers.Replace(Regex(k), v) for k, v in (rewrites or {}).items())])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.Split(" ", "removed"), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   unk_token="<unk>", additional_special_tokens=SPECIAL[1:])


def build_pipeline(layout: str = "qwen_image") -> Any:
    """The tiny ``QwenImagePipeline`` in memory, weights seeded (bit-reproducible)."""
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = tiny_config(layout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        text = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**cfg["text_encoder"])).eval()
        vae = AutoencoderKLQwenImage(**cfg["vae"]).eval()
        zero_biases(vae, cfg["vae_biases"])
        transformer = QwenImageTransformer2DModel(**cfg["transformer"]).eval()
    return QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]), vae=vae,
                             text_encoder=text, tokenizer=build_tokenizer(), transformer=transformer)

"""The tiny HunyuanVideo 1.5: the real ``HunyuanVideo15Pipeline`` architecture, random weights.

Real classes at tiny width: ``HunyuanVideo15Transformer3DModel`` (2 dual-stream blocks and one
token-refiner block, 2 x 16 heads, RoPE axes 4 + 6 + 6, 65 input channels = 32 latent + 32
condition + 1 mask as the pipeline concatenates them), ``AutoencoderKLHunyuanVideo15`` (32
latent channels, x16 in space, x4 in time) and both text-encoder families: a
``Qwen2_5_VLTextModel`` (3 layers: the pipeline reads the hidden states 2 layers before the
last) with an offline word-level tokenizer carrying a chat template, and a byT5
``T5EncoderModel`` for the quoted glyph text with the real ``ByT5Tokenizer`` (bytes: no
vocabulary file). The pipeline drops the first 108 template tokens (its system prompt,
``prompt_template_encode_start_idx``); the tokenizer's vocabulary holds that prompt's words,
keeps its punctuation as tokens and splits its indentation as Qwen's does, so the prefix is
108 tokens here too. Scheduler and
guider: the 480p T2V checkpoint's static shift 5 and CFG 6.
"""

from __future__ import annotations

from typing import Any

from unirl_stream.models.qwen_image_tiny import QWEN_VOCAB
from unirl_stream.models.qwen_image_tiny import build_tokenizer as qwen_tokenizer
from unirl_stream.models.tiny import zero_biases
from unirl_stream.models.z_image_tiny import CHAT_TEMPLATE

# The words of the pipeline's system prompt (``HunyuanVideo15Pipeline.system_message``).
_SYSTEM_WORDS = ("you are a helpful assistant describe the video by detailing following aspects main "
                 "content and theme of color shape size texture quantity text spatial relationships "
                 "objects actions events behaviors temporal physical movement changes background "
                 "environment light style atmosphere camera angles movements transitions used "
                 "1 2 3 4 5 . indent space").split()
# Qwen's pre-tokenizer splits the prompt's indentation before each list number into two tokens
# (the run less one space, then that space); two words stand in for them here.
REWRITES = {r" {2,}(?=\d)": " indent space "}
HV_VOCAB: dict[str, int] = {**QWEN_VOCAB, **{w: len(QWEN_VOCAB) + i for i, w in enumerate(
    sorted(set(_SYSTEM_WORDS) - set(QWEN_VOCAB)))}}
TEXT_DIM, GLYPH_DIM = 32, 16


def tiny_config(layout: str = "hunyuan_video15") -> dict[str, Any]:
    """Every constructor argument of the tiny HunyuanVideo 1.5 (what the cache hash covers)."""
    return {
        "layout": layout,
        "seed": 0,
        "vocab": HV_VOCAB,
        "chat_template": CHAT_TEMPLATE,
        "rewrites": REWRITES,
        "text_encoder": {"vocab_size": len(HV_VOCAB), "hidden_size": TEXT_DIM, "intermediate_size": 64,
                         "num_hidden_layers": 3, "num_attention_heads": 2, "num_key_value_heads": 1,
                         "max_position_embeddings": 512,
                         "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}},
        # byT5-small's layout (gated GELU) at tiny width; 384 = the ByT5Tokenizer's ids
        "text_encoder_2": {"vocab_size": 384, "d_model": GLYPH_DIM, "d_kv": 8, "d_ff": 32, "num_layers": 1,
                           "num_heads": 2, "feed_forward_proj": "gated-gelu", "is_encoder_decoder": False},
        "transformer": {"in_channels": 65, "out_channels": 32, "num_attention_heads": 2, "attention_head_dim": 16,
                        "num_layers": 2, "num_refiner_layers": 1, "mlp_ratio": 2.0, "text_embed_dim": TEXT_DIM,
                        "text_embed_2_dim": GLYPH_DIM, "image_embed_dim": 16, "rope_axes_dim": [4, 6, 6],
                        "task_type": "t2v"},
        "vae": {"latent_channels": 32, "block_out_channels": [8, 8, 16, 32, 64], "layers_per_block": 1,
                "spatial_compression_ratio": 16, "temporal_compression_ratio": 4},
        "vae_biases": "zero",  # see tiny.zero_biases
        "scheduler": {"num_train_timesteps": 1000, "shift": 5.0, "use_dynamic_shifting": False},
        "guider": {"guidance_scale": 6.0},
    }


def build_pipeline(layout: str = "hunyuan_video15") -> Any:
    """The tiny ``HunyuanVideo15Pipeline`` in memory, weights seeded (bit-reproducible)."""
    import torch
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from transformers import (
        ByT5Tokenizer,
        Qwen2_5_VLTextConfig,
        Qwen2_5_VLTextModel,
        T5Config,
        T5EncoderModel,
    )

    cfg = tiny_config(layout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        text = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(**cfg["text_encoder"])).eval()
        glyph = T5EncoderModel(T5Config(**cfg["text_encoder_2"])).eval()
        vae = AutoencoderKLHunyuanVideo15(**cfg["vae"]).eval()
        zero_biases(vae, cfg["vae_biases"])
        transformer = HunyuanVideo15Transformer3DModel(**cfg["transformer"]).eval()
    tok = qwen_tokenizer(cfg["vocab"], cfg["rewrites"])
    tok.chat_template = cfg["chat_template"]
    return HunyuanVideo15Pipeline(
        text_encoder=text, tokenizer=tok, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]), text_encoder_2=glyph,
        tokenizer_2=ByT5Tokenizer(), guider=ClassifierFreeGuidance(**cfg["guider"]))

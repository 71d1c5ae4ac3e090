"""The tiny Z-Image: the real ``ZImagePipeline`` architecture with random weights.

Real classes at tiny width: ``ZImageTransformer2DModel`` (single-stream DiT: 2 blocks plus one
noise and one caption refiner block, 2 x 16 heads, RoPE axes 4 + 6 + 6), the FLUX-style
16-channel ``AutoencoderKL`` (x8; Z-Image's scaling 0.3611 and shift 0.1159) and a
``Qwen3Model`` text encoder with an offline word-level tokenizer carrying a Qwen3-style chat
template (the pipeline wraps every prompt in it). Scheduler: static shift 3, no dynamic
shifting, as Z-Image's own config.
"""

from __future__ import annotations

from typing import Any

from unirl_stream.models.qwen_image_tiny import QWEN_VOCAB
from unirl_stream.models.qwen_image_tiny import build_tokenizer as qwen_tokenizer
from unirl_stream.models.tiny import zero_biases

# Qwen3's template for one user turn with the generation prompt (thinking enabled: no
# empty think block), which is what the pipeline asks for.
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEXT_DIM = 32


def tiny_config(layout: str = "z_image") -> dict[str, Any]:
    """Every constructor argument of the tiny Z-Image (what the cache hash covers)."""
    return {
        "layout": layout,
        "seed": 0,
        "vocab": QWEN_VOCAB,
        "chat_template": CHAT_TEMPLATE,
        "text_encoder": {"vocab_size": len(QWEN_VOCAB), "hidden_size": TEXT_DIM, "intermediate_size": 64,
                         "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                         "head_dim": 16, "max_position_embeddings": 256},
        "transformer": {"all_patch_size": [2], "all_f_patch_size": [1], "in_channels": 16, "dim": 32,
                        "n_layers": 2, "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 2,
                        "cap_feat_dim": TEXT_DIM, "axes_dims": [4, 6, 6], "axes_lens": [64, 32, 32]},
        "vae": {"in_channels": 3, "out_channels": 3, "latent_channels": 16,
                "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
                "block_out_channels": [8, 8, 8, 8], "layers_per_block": 1, "norm_num_groups": 4,
                "scaling_factor": 0.3611, "shift_factor": 0.1159,
                "use_quant_conv": False, "use_post_quant_conv": False},
        "vae_biases": "zero",  # see tiny.zero_biases
        "scheduler": {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False},
    }


def build_pipeline(layout: str = "z_image") -> Any:
    """The tiny ``ZImagePipeline`` in memory, weights seeded (bit-reproducible)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    cfg = tiny_config(layout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        text = Qwen3Model(Qwen3Config(**cfg["text_encoder"])).eval()
        vae = AutoencoderKL(**cfg["vae"]).eval()
        zero_biases(vae, cfg["vae_biases"])
        transformer = ZImageTransformer2DModel(**cfg["transformer"]).eval()
    tok = qwen_tokenizer()
    tok.chat_template = cfg["chat_template"]
    return ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]), vae=vae,
                          text_encoder=text, tokenizer=tok, transformer=transformer)

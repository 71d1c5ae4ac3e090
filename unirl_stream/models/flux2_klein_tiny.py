"""The tiny FLUX.2-klein: the real ``Flux2KleinPipeline`` architecture with random weights.

Real classes at tiny width: ``Flux2Transformer2DModel`` (1 double-stream and 2 single-stream
blocks, 2 x 16 heads, four RoPE axes of 4, no guidance embedding as klein), the
``AutoencoderKLFlux2`` (32 latent channels, x8, batch-norm statistics over the 2x2-patchified
128 channels) and a ``Qwen3ForCausalLM`` text encoder with 27 layers, since the pipeline
stacks the hidden states of layers 9, 18 and 27 (the transformer's text width is 3 x 16).
The tokenizer carries a Qwen3-style chat template (``enable_thinking=False`` adds the empty
think block; its tags are unknown words here). Scheduler: FLUX's dynamic-shift config; the
pipeline's own empirical mu rule picks the shift (``schedules.flux2_mu``).
"""

from __future__ import annotations

from typing import Any

from unirl_stream.models.qwen_image_tiny import QWEN_VOCAB
from unirl_stream.models.qwen_image_tiny import build_tokenizer as qwen_tokenizer
from unirl_stream.models.tiny import zero_biases

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
                 "{% endif %}{% endif %}")


def tiny_config(layout: str = "flux2_klein") -> dict[str, Any]:
    """Every constructor argument of the tiny FLUX.2-klein (what the cache hash covers)."""
    return {
        "layout": layout,
        "seed": 0,
        "vocab": QWEN_VOCAB,
        "chat_template": CHAT_TEMPLATE,
        "text_encoder": {"vocab_size": len(QWEN_VOCAB), "hidden_size": 16, "intermediate_size": 32,
                         "num_hidden_layers": 27, "num_attention_heads": 2, "num_key_value_heads": 1,
                         "head_dim": 8, "max_position_embeddings": 256},
        "transformer": {"patch_size": 1, "in_channels": 128, "num_layers": 1, "num_single_layers": 2,
                        "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 48,
                        "timestep_guidance_channels": 32, "axes_dims_rope": [4, 4, 4, 4],
                        "guidance_embeds": False},
        "vae": {"block_out_channels": [8, 8, 8, 8], "layers_per_block": 1, "latent_channels": 32,
                "norm_num_groups": 4, "mid_block_add_attention": False},
        "vae_biases": "zero",  # see tiny.zero_biases
        "scheduler": {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
                      "num_train_timesteps": 1000, "shift": 3.0, "time_shift_type": "exponential",
                      "use_dynamic_shifting": True},
        "index": {"is_distilled": True},  # klein-4B is step-distilled: no CFG
    }


def build_pipeline(layout: str = "flux2_klein") -> Any:
    """The tiny ``Flux2KleinPipeline`` in memory, weights seeded (bit-reproducible)."""
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = tiny_config(layout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        text = Qwen3ForCausalLM(Qwen3Config(**cfg["text_encoder"])).eval()
        vae = AutoencoderKLFlux2(**cfg["vae"]).eval()
        zero_biases(vae, cfg["vae_biases"])
        transformer = Flux2Transformer2DModel(**cfg["transformer"]).eval()
    tok = qwen_tokenizer()
    tok.chat_template = cfg["chat_template"]
    return Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]), vae=vae,
                              text_encoder=text, tokenizer=tok, transformer=transformer,
                              is_distilled=cfg["index"]["is_distilled"])

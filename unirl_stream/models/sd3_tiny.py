"""The tiny SD3.5: the real ``StableDiffusion3Pipeline`` architecture with random weights.

Every component is the real class at tiny width: ``SD3Transformer2DModel`` with SD3.5's dual
attention in its first block and RMS q/k norm, ``AutoencoderKL`` with 16 latent channels and
four resolution levels (x8, as the real VAE), two ``CLIPTextModelWithProjection`` (CLIP-L and
CLIP-G) and a ``T5EncoderModel``, with offline word-level tokenizers (CLIP style: start and end
tokens, fixed length; T5 style: ``</s>``). Saved with ``save_pretrained`` and loaded back
through the plugin's real loader (``tiny.resolve_model_path("tiny:sd3")``).

Widths are chosen so SD3's text plumbing holds: CLIP-L + CLIP-G hidden sizes (16 + 16) are
zero-padded up to T5's width (= the transformer's ``joint_attention_dim``, 32), and the two
CLIP projections (16 + 16) give ``pooled_projection_dim`` 32.
"""

from __future__ import annotations

from typing import Any

from unirl_stream.models.tiny import VOCAB, build_tokenizer, zero_biases

CLIP_LENGTH = 16  # the real CLIP tokenizers pad to 77; 16 keeps the tiny model cheap
_CLIP_SPECIAL = ["<|pad|>", "<|startoftext|>", "<|endoftext|>"]
# CLIP's vocabulary: the shared words after CLIP's own start/end tokens (ids 1 and 2 here).
CLIP_VOCAB: dict[str, int] = {w: i for i, w in enumerate(_CLIP_SPECIAL + [w for w in VOCAB if not w.startswith("<")])}
CLIP_VOCAB["<unk>"] = len(CLIP_VOCAB)


def _clip(hidden: int) -> dict[str, Any]:
    return {"vocab_size": len(CLIP_VOCAB), "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "projection_dim": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "max_position_embeddings": CLIP_LENGTH, "hidden_act": "gelu",
            "bos_token_id": CLIP_VOCAB["<|startoftext|>"], "eos_token_id": CLIP_VOCAB["<|endoftext|>"],
            "pad_token_id": CLIP_VOCAB["<|pad|>"]}


def tiny_config(layout: str = "sd3") -> dict[str, Any]:
    """Every constructor argument of the tiny SD3.5 (what the cache hash covers)."""
    return {
        "layout": layout,
        "seed": 0,
        "vocab": VOCAB,
        "clip_vocab": CLIP_VOCAB,
        "text_encoder": _clip(16),
        "text_encoder_2": _clip(16),
        "text_encoder_3": {"vocab_size": len(VOCAB), "d_model": 32, "d_kv": 8, "d_ff": 48, "num_layers": 2,
                           "num_heads": 4, "relative_attention_num_buckets": 8,
                           "relative_attention_max_distance": 16, "feed_forward_proj": "gated-gelu",
                           "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0},
        "transformer": {"sample_size": 32, "patch_size": 2, "in_channels": 16, "out_channels": 16,
                        "num_layers": 2, "attention_head_dim": 8, "num_attention_heads": 2,
                        "joint_attention_dim": 32, "caption_projection_dim": 16,
                        "pooled_projection_dim": 32, "pos_embed_max_size": 32,
                        "dual_attention_layers": [0], "qk_norm": "rms_norm"},
        "vae": {"in_channels": 3, "out_channels": 3, "latent_channels": 16,
                "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
                "block_out_channels": [8, 8, 8, 8], "layers_per_block": 1, "norm_num_groups": 4,
                # SD3.5's latent statistics, so the decode path applies real-looking values
                "scaling_factor": 1.5305, "shift_factor": 0.0609,
                "use_quant_conv": False, "use_post_quant_conv": False},
        "vae_biases": "zero",  # see tiny.zero_biases: a learnable image needs them
        "scheduler": {"num_train_timesteps": 1000, "shift": 3.0},
    }


def build_pipeline(layout: str = "sd3") -> Any:
    """The tiny ``StableDiffusion3Pipeline`` in memory, weights seeded (bit-reproducible)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    cfg = tiny_config(layout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        clip_l = CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder"])).eval()
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"])).eval()
        t5 = T5EncoderModel(T5Config(**cfg["text_encoder_3"])).eval()
        vae = AutoencoderKL(**cfg["vae"]).eval()
        zero_biases(vae, cfg["vae_biases"])
        transformer = SD3Transformer2DModel(**cfg["transformer"]).eval()

    def clip_tok() -> Any:
        return build_tokenizer(CLIP_VOCAB, bos="<|startoftext|>", eos="<|endoftext|>", pad="<|pad|>",
                               max_length=CLIP_LENGTH)

    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]), vae=vae,
        text_encoder=clip_l, tokenizer=clip_tok(), text_encoder_2=clip_g, tokenizer_2=clip_tok(),
        text_encoder_3=t5, tokenizer_3=build_tokenizer(),
    )

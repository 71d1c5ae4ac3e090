"""The ``hunyuan_video15`` model plugin: HunyuanVideo 1.5 text-to-video (dual-stream DiT).

Text, as ``HunyuanVideo15Pipeline.encode_prompt``: the pipeline's chat template (its video
system prompt, the first 108 tokens dropped) through the Qwen2.5-VL text model, hidden states
two layers before the last, with a mask; and the quoted glyph text of the prompt through byT5
(all zeros, mask 0, when the prompt quotes nothing). The pipeline pads the two to 1000 and 256
tokens; we pad to ``model.max_sequence_length`` and ``model.options.glyph_tokens``: the
transformer masks padding out of every attention and the refiner's pooling, so a prompt that
fits gets the same velocity (the tests compare against the pipeline's own padding).

Latents: 32 channels, x16 in space, x4 in time (``4k+1`` frames), patch 1x1x1. The transformer
takes 65 channels: the latent, a zero condition latent and a zero mask (text-to-video), and
image embeddings whose all-zero values mark text-to-video; those vision tokens are masked, so
we pass one instead of the pipeline's 729 (same velocity, tested). Decoding divides by the
VAE's ``scaling_factor``.

Schedule: the pipeline's static shift (``linspace(1, 0, N + 1)`` through the scheduler's
``shift``; no dynamic shifting) with the recipe's ``sampling.shift`` (the 480p T2V checkpoint
uses 5, 720p 9). Guidance: the checkpoint's guider is plain CFG (diffusers'
``ClassifierFreeGuidance``), the core's rule; its scale is ``sampling.guidance_scale``.

LoRA targets: the dual-stream blocks' attention projections of both streams; the token
refiner's self-attention uses the same four names (``to_q, to_k, to_v, to_out.0``) and gets
adapters too, as peft matches name suffixes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unirl_stream.api import UserInputError
from unirl_stream.models.flow import Cond, FlowOptions, Loaded
from unirl_stream.models.pipeline_policy import PipelinePolicy

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from unirl_stream.recipe import Recipe

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


class HunyuanVideo15Options(FlowOptions, forbid_unknown_fields=True, kw_only=True):
    glyph_tokens: int = 256
    """byT5 tokens of the prompt's quoted glyph text (the pipeline's 256)."""


class HunyuanVideo15Policy(PipelinePolicy):
    """api.Policy for HunyuanVideo 1.5 T2V diffusers checkpoints (``HunyuanVideo15Pipeline``)."""

    Config = HunyuanVideo15Options
    family = "HunyuanVideo-1.5"
    pipeline_class = "HunyuanVideo15Pipeline"
    folders = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2", "vae", "transformer", "scheduler")
    hub_repo = "hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v"
    temporal = 4
    tiny = "hunyuan_video15"
    card = {
        "layouts": "HunyuanVideo 1.5 T2V (dual-stream DiT with a token refiner, 32-channel VAE x16 "
                   "in space and x4 in time, patch 1; `tiny:hunyuan_video15`)",
        "text encoders": "Qwen2.5-VL (chat template, 3rd-last hidden states, masked) + byT5 (quoted glyph text)",
        "LoRA targets": "`" + ", ".join(LORA_TARGETS) + "` (and the token refiner's self-attention)",
        "schedule": "static shift (480p T2V: 5)",
        "learning test": "brightness on 5-frame videos, 3 seeds, gain 1.5-7.6 sample std (16 rounds; 6 seeds measured)",
        "recipe": "`hunyuan_video15_dancegrpo.toml`",
    }

    @classmethod
    def vae_spatial(cls, vae_cfg: dict[str, Any]) -> int:
        return int(vae_cfg.get("spatial_compression_ratio") or 16)

    @classmethod
    def patch(cls, transformer_cfg: dict[str, Any]) -> int:
        return int(transformer_cfg.get("patch_size") or 1)

    @classmethod
    def check_model(cls, recipe: Recipe) -> None:
        super().check_model(recipe)
        if cls.configs(recipe.model.path)["scheduler"].get("use_dynamic_shifting"):
            raise UserInputError(f"model.path: {recipe.model.path}'s scheduler uses dynamic shifting, which "
                                 f"HunyuanVideo15Pipeline never configures (it passes no mu); not a T2V checkpoint")

    # ------------------------------------------------------------------ construction
    def _load(self, dtype: torch.dtype, vae_dtype: torch.dtype) -> Loaded:
        loaded = super()._load(dtype, vae_dtype)
        pipe = loaded.pipe
        g = pipe.guider
        if g.use_original_formulation or g.guidance_rescale > 0:
            raise UserInputError(f"model.path: {loaded.path}'s guider is not plain CFG (use_original_formulation "
                                 f"{g.use_original_formulation}, guidance_rescale {g.guidance_rescale})")
        # encode_prompt pads to these instance attributes (the pipeline's 1000 and 256)
        pipe.tokenizer_max_length = self.recipe.model.max_sequence_length
        pipe.tokenizer_2_max_length = self.options.glyph_tokens
        return loaded

    # ------------------------------------------------------------------ shapes
    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        s, p = self.recipe.sampling, self.pipeline
        t = (s.num_frames - 1) // p.vae_scale_factor_temporal + 1
        sp = p.vae_scale_factor_spatial
        return (int(p.num_channels_latents), t, s.height // sp, s.width // sp)

    @property
    def media_shape(self) -> tuple[int, int, int, int]:
        s = self.recipe.sampling
        return (s.num_frames, s.height, s.width, 3)

    # ------------------------------------------------------------------ text
    def _encode(self, texts: list[str]) -> Cond:
        emb, mask, emb2, mask2 = self.pipeline.encode_prompt(prompt=list(texts), device=self.device, dtype=self.dtype,
                                                             batch_size=len(texts))
        return {"encoder_hidden_states": emb, "encoder_attention_mask": mask,
                "encoder_hidden_states_2": emb2, "encoder_attention_mask_2": mask2}

    # ------------------------------------------------------------------ model
    def _forward(self, expert: int, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        import torch

        b, _, f, h, w = x.shape
        # text-to-video: zero condition latent and mask, zero (masked) image embeddings
        inp = torch.cat([x, x.new_zeros(b, x.shape[1] + 1, f, h, w)], dim=1)
        image = x.new_zeros(b, 1, self.pipeline.vision_states_dim)
        return self.experts[expert](hidden_states=inp, timestep=t.to(x.dtype), image_embeds=image,
                                    return_dict=False, **cond)[0]

    def _decode_batch(self, z: torch.Tensor) -> torch.Tensor:
        import torch

        vae = self.components.vae
        # One sample per VAE call: the mid-block attention's causal mask is [b, L, L] against
        # [b, 1, L, C] queries, which only broadcasts for b = 1 (diffusers 0.42.1).
        video = torch.cat([vae.decode((zi[None] / vae.config.scaling_factor).to(vae.dtype), return_dict=False)[0]
                           for zi in z])
        return video.permute(0, 2, 3, 4, 1)  # [b, 3, F, H, W] -> [b, F, H, W, 3]

    def _blocks(self, model: Any) -> list[Any]:
        return list(model.transformer_blocks)

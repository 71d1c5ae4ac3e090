"""The ``sd3`` model plugin: Stable Diffusion 3 / 3.5 (MMDiT) as an api.Policy.

Three text encoders as in diffusers' ``StableDiffusion3Pipeline.encode_prompt``: CLIP-L and
CLIP-G (penultimate hidden states, concatenated and zero-padded to T5's width, plus their
pooled projections) and T5-XXL (``model.max_sequence_length`` tokens). One transformer; the
latents are [16, H/8, W/8] images, patchified inside ``SD3Transformer2DModel``; decoding undoes
the VAE's ``scaling_factor`` and ``shift_factor``. The schedule is the static shift of the
recipe (SD3.5-Medium's scheduler uses shift 3, no dynamic shifting), pinned on the trajectory.

LoRA targets in the Flow-GRPO SD3.5 recipe: both streams' attention projections,
``to_q, to_k, to_v, to_out.0, add_q_proj, add_k_proj, add_v_proj, to_add_out`` (the recipe
names them; peft matches module-name suffixes).

Module import is cheap: ``check`` reads JSON configs only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unirl_stream.models.flow import Cond
from unirl_stream.models.pipeline_policy import PipelinePolicy

if TYPE_CHECKING:  # pragma: no cover
    import torch


COMPONENTS = ("tokenizer", "tokenizer_2", "tokenizer_3", "text_encoder", "text_encoder_2",
              "text_encoder_3", "vae", "transformer", "scheduler")
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


class SD3Policy(PipelinePolicy):
    """api.Policy for SD3/SD3.5 diffusers checkpoints (``StableDiffusion3Pipeline`` layout)."""

    family = "SD3"
    pipeline_class = "StableDiffusion3Pipeline"
    folders = COMPONENTS
    hub_repo = "stabilityai/stable-diffusion-3.5-medium"
    tiny = "sd3"
    card = {
        "layouts": "SD3 / SD3.5 (MMDiT, 16-channel VAE x8, patch 2; SD3.5's dual attention; "
                   "`tiny:sd3`)",
        "text encoders": "CLIP-L + CLIP-G (pooled and penultimate states) + T5-XXL",
        "LoRA targets": "`" + ", ".join(LORA_TARGETS) + "`",
        "schedule": "static shift (SD3.5: 3)",
        "learning test": "brightness, 3 seeds, gain 3.8-9.9 sample std; quickstart_image through Ray",
        "recipe": "`sd3_flowgrpo_pickscore.toml`, `quickstart_image.toml`",
    }

    @classmethod
    def vae_spatial(cls, vae_cfg: dict[str, Any]) -> int:
        """``AutoencoderKL``: x2 per resolution level after the first."""
        return 2 ** (len(vae_cfg.get("block_out_channels") or [0] * 4) - 1)

    # ------------------------------------------------------------------ geometry
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s, sp = self.recipe.sampling, self.pipeline.vae_scale_factor
        return (int(self.experts[0].config.in_channels), s.height // sp, s.width // sp)

    # ------------------------------------------------------------------ model
    def _encode(self, texts: list[str]) -> Cond:
        emb, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=texts, prompt_2=None, prompt_3=None, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=self.recipe.model.max_sequence_length,
        )
        return {"encoder_hidden_states": emb.to(self.dtype), "pooled_projections": pooled.to(self.dtype)}

    def _forward(self, expert: int, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        return self.experts[expert](hidden_states=x, timestep=t, return_dict=False, **cond)[0]

    def _decode_batch(self, z: torch.Tensor) -> torch.Tensor:
        vae = self.components.vae
        z = z / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(z.to(vae.dtype), return_dict=False)[0]
        return image.permute(0, 2, 3, 1)[:, None]  # [b, 3, H, W] -> [b, 1, H, W, 3]

    def _blocks(self, model: Any) -> list[Any]:
        return list(model.transformer_blocks)

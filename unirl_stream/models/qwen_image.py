"""The ``qwen_image`` model plugin: Qwen-Image (MMDiT over a Qwen2.5-VL text encoder).

Text: the pipeline's chat template through Qwen2.5-VL, its last hidden states after the
template's 34-token system prefix, with a mask; we pad every prompt to
``model.max_sequence_length`` (mask 0 on padding) so cached prompts batch and CFG rows
concatenate. Latents are packed as diffusers does: 2x2 patches of the 16-channel x8 latent,
[(H/16)(W/16), 64] per image, unpacked for the VAE (whose latents are normalised with the
config's per-channel mean/std). The transformer sees timestep sigma (t / 1000).

Schedule: Qwen-Image's scheduler uses dynamic shifting; mu comes from the image token count
with the scheduler config's constants, and sigmas from diffusers' own scheduler
(exponential time shift, ``shift_terminal`` 0.02); ``sampling.shift`` is unused. Guidance is
Qwen-Image's "true CFG" with its norm rescaling: the guided velocity of each token is scaled
back to the conditional velocity's norm.

LoRA targets (reference recipes): both streams' attention projections, ``to_q, to_k, to_v,
to_out.0, add_q_proj, add_k_proj, add_v_proj, to_add_out``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unirl_stream.models.flow import Cond
from unirl_stream.models.pipeline_policy import PipelinePolicy
from unirl_stream.models.schedules import dynamic_sigmas, shift_mu

if TYPE_CHECKING:  # pragma: no cover
    import torch

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


def image_tokens(height: int, width: int, vae_scale: int = 8, patch: int = 2) -> int:
    return (height // vae_scale // patch) * (width // vae_scale // patch)


class QwenImagePolicy(PipelinePolicy):
    """api.Policy for Qwen-Image diffusers checkpoints (``QwenImagePipeline`` layout)."""

    family = "Qwen-Image"
    pipeline_class = "QwenImagePipeline"
    folders = ("tokenizer", "text_encoder", "vae", "transformer", "scheduler")
    hub_repo = "Qwen/Qwen-Image"
    tiny = "qwen_image"
    card = {
        "layouts": "Qwen-Image (MMDiT, 16-channel VAE x8, 2x2 packed latents; `tiny:qwen_image`)",
        "text encoders": "Qwen2.5-VL (chat template, last hidden states, masked)",
        "LoRA targets": "`" + ", ".join(LORA_TARGETS) + "`",
        "schedule": "dynamic shift: mu from (H/16)(W/16) tokens, exponential, shift_terminal 0.02",
        "learning test": "brightness, 3 seeds, gain 1.05-5.1 sample std (32 rounds)",
        "recipe": "`qwen_image_ocr.toml`",
    }

    @classmethod
    def vae_spatial(cls, vae_cfg: dict[str, Any]) -> int:
        return 2 ** len(vae_cfg.get("temperal_downsample") or [False, True, True])

    # ------------------------------------------------------------------ schedule, shapes
    def _sigmas(self) -> list[float]:
        s = self.recipe.sampling
        cfg = dict(self.pipeline.scheduler.config)
        mu = shift_mu(image_tokens(s.height, s.width, self.pipeline.vae_scale_factor), cfg)
        return dynamic_sigmas(cfg, s.num_inference_steps, mu)

    @property
    def latent_shape(self) -> tuple[int, int]:
        s = self.recipe.sampling
        return (image_tokens(s.height, s.width, self.pipeline.vae_scale_factor),
                int(self.experts[0].config.in_channels))

    # ------------------------------------------------------------------ text
    def _encode(self, texts: list[str]) -> Cond:
        import torch

        n = self.recipe.model.max_sequence_length
        emb, mask = self.pipeline.encode_prompt(prompt=texts, device=self.device, max_sequence_length=n)
        if mask is None:  # diffusers drops an all-ones mask
            mask = torch.ones(emb.shape[:2], dtype=torch.long, device=emb.device)
        pad = n - emb.shape[1]
        emb = torch.nn.functional.pad(emb, (0, 0, 0, pad))
        mask = torch.nn.functional.pad(mask[:, : emb.shape[1]], (0, pad))
        return {"encoder_hidden_states": emb.to(self.dtype), "encoder_hidden_states_mask": mask}

    # ------------------------------------------------------------------ model
    def _forward(self, expert: int, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        s, sp = self.recipe.sampling, self.pipeline.vae_scale_factor
        shapes = [[(1, s.height // sp // 2, s.width // sp // 2)]] * x.shape[0]
        return self.experts[expert](hidden_states=x, timestep=t.to(x.dtype) / 1000, img_shapes=shapes,
                                    return_dict=False, **cond)[0]

    def _guide(self, cond_v: torch.Tensor, uncond_v: torch.Tensor, g: float) -> torch.Tensor:
        import torch

        comb = uncond_v + g * (cond_v - uncond_v)
        return comb * (torch.norm(cond_v, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))

    def _decode_batch(self, z: torch.Tensor) -> torch.Tensor:
        import torch

        s, vae = self.recipe.sampling, self.components.vae
        lat = self.pipeline._unpack_latents(z, s.height, s.width, self.pipeline.vae_scale_factor)
        c = lat.shape[1]
        mean = torch.tensor(vae.config.latents_mean, device=z.device).view(1, c, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, device=z.device).view(1, c, 1, 1, 1)
        image = vae.decode((lat * std + mean).to(vae.dtype), return_dict=False)[0][:, :, 0]
        return image.permute(0, 2, 3, 1)[:, None]  # [b, 3, H, W] -> [b, 1, H, W, 3]

    def _blocks(self, model: Any) -> list[Any]:
        return list(model.transformer_blocks)

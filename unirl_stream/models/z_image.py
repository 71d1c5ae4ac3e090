"""The ``z_image`` model plugin: Z-Image (single-stream DiT over a Qwen3 text encoder).

Text: the pipeline's Qwen3 chat template, hidden states of the second-to-last layer, only the
prompt's real tokens (``ZImagePipeline._encode_prompt``); each prompt's embedding is cached
padded to ``model.max_sequence_length`` with its length, and handed to the transformer as the
list of real-length tensors it takes. Latents are [16, H/8, W/8] (the FLUX-style VAE; decode
undoes scaling and shift). The transformer takes a list of [C, 1, h, w] latents and the time
as ``1 - sigma``, and predicts the negated velocity (the pipeline negates it; so do we).

Guidance: the recipe's ``guidance_scale`` g is standard CFG (uncond + g (cond - uncond)), the
same for every plugin; ZImagePipeline's ``guidance_scale`` s means pos + s (pos - neg), i.e.
our g = s + 1. CFG truncation and renormalisation (off by default in diffusers) are not used.
Schedule: static shift (Z-Image's scheduler: shift 3, no dynamic shifting).

LoRA targets (single-stream attention and the feed-forward): ``to_q, to_k, to_v, to_out.0``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unirl_stream.models.flow import Cond
from unirl_stream.models.pipeline_policy import PipelinePolicy

if TYPE_CHECKING:  # pragma: no cover
    import torch

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class ZImagePolicy(PipelinePolicy):
    """api.Policy for Z-Image diffusers checkpoints (``ZImagePipeline`` layout)."""

    family = "Z-Image"
    pipeline_class = "ZImagePipeline"
    folders = ("tokenizer", "text_encoder", "vae", "transformer", "scheduler")
    hub_repo = "Tongyi-MAI/Z-Image-Turbo"
    tiny = "z_image"
    card = {
        "layouts": "Z-Image (single-stream DiT with refiner blocks, FLUX-style 16-channel VAE x8, "
                   "patch 2; `tiny:z_image`)",
        "text encoders": "Qwen3 (chat template, second-to-last hidden states, real tokens only)",
        "LoRA targets": "`" + ", ".join(LORA_TARGETS) + "`",
        "schedule": "static shift (Z-Image: 3); our guidance g = the pipeline's s + 1",
        "learning test": "brightness, 3 seeds, gain 1.6-4.7 sample std (2 steps)",
        "recipe": "`z_image_flowgrpo.toml`",
    }

    @classmethod
    def vae_spatial(cls, vae_cfg: dict[str, Any]) -> int:
        return 2 ** (len(vae_cfg.get("block_out_channels") or [0] * 4) - 1)

    @classmethod
    def patch(cls, transformer_cfg: dict[str, Any]) -> int:
        return int((transformer_cfg.get("all_patch_size") or [2])[0])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s, sp = self.recipe.sampling, self.pipeline.vae_scale_factor
        return (int(self.experts[0].config.in_channels), s.height // sp, s.width // sp)

    def _encode(self, texts: list[str]) -> Cond:
        import torch

        n = self.recipe.model.max_sequence_length
        embs = self.pipeline._encode_prompt(list(texts), device=self.device, max_sequence_length=n)
        padded = torch.stack([torch.nn.functional.pad(e, (0, 0, 0, n - e.shape[0])) for e in embs])
        lengths = torch.tensor([e.shape[0] for e in embs], device=self.device)
        return {"cap": padded.to(self.dtype), "length": lengths}

    def _forward(self, expert: int, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        import torch

        caps = [c[: int(n)] for c, n in zip(cond["cap"], cond["length"], strict=True)]
        out = self.experts[expert](list(x.unsqueeze(2).unbind(0)), (1000.0 - t) / 1000.0, caps,
                                   return_dict=False)[0]
        return -torch.stack(out).squeeze(2)

    def _decode_batch(self, z: torch.Tensor) -> torch.Tensor:
        vae = self.components.vae
        image = vae.decode((z / vae.config.scaling_factor + vae.config.shift_factor).to(vae.dtype),
                           return_dict=False)[0]
        return image.permute(0, 2, 3, 1)[:, None]

    def _blocks(self, model: Any) -> list[Any]:
        return list(model.layers)

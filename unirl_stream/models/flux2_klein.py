"""The ``flux2_klein`` model plugin: FLUX.2-klein (double- and single-stream DiT, Qwen3 text).

Text: the pipeline's Qwen3 chat template padded to ``model.max_sequence_length``; the hidden
states of layers 9, 18 and 27 concatenated per token (all tokens, padding included, exactly as
the pipeline passes them; the transformer takes no text mask), with 4-D text position ids.
Latents: the VAE's 32 channels at x8, 2x2-patchified to 128 channels and packed to
[(H/16)(W/16), 128] tokens with 4-D position ids; decoding undoes the VAE's batch-norm
statistics and the patchify. The transformer sees timestep sigma (t / 1000), no guidance
embedding (klein).

Schedule: dynamic shift with FLUX.2's own empirical mu (``schedules.flux2_mu``: a function of
the image token count *and* the step count), sigmas from diffusers' scheduler with the
checkpoint's config. Guidance: the distilled klein checkpoints ignore CFG in the pipeline;
``check`` refuses ``guidance_scale > 1`` on them.

LoRA targets: the double-stream attention projections of both streams and the single-stream
blocks' fused ``to_qkv_mlp_proj``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unirl_stream.api import UserInputError
from unirl_stream.models.flow import Cond
from unirl_stream.models.pipeline_policy import PipelinePolicy
from unirl_stream.models.schedules import dynamic_sigmas, flux2_mu

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from unirl_stream.recipe import Recipe

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                "to_qkv_mlp_proj"]


class Flux2KleinPolicy(PipelinePolicy):
    """api.Policy for FLUX.2-klein diffusers checkpoints (``Flux2KleinPipeline`` layout)."""

    family = "FLUX.2-klein"
    pipeline_class = "Flux2KleinPipeline"
    folders = ("tokenizer", "text_encoder", "vae", "transformer", "scheduler")
    hub_repo = "black-forest-labs/FLUX.2-klein-4B"
    tiny = "flux2_klein"
    card = {
        "layouts": "FLUX.2-klein (double + single-stream DiT, 32-channel VAE x8 with batch-norm "
                   "statistics, 2x2 patchified to 128; `tiny:flux2_klein`)",
        "text encoders": "Qwen3 (chat template, hidden states of layers 9, 18, 27 concatenated)",
        "LoRA targets": "`" + ", ".join(LORA_TARGETS) + "`",
        "schedule": "dynamic shift with FLUX.2's empirical mu (image tokens and step count)",
        "learning test": "brightness at 64x64, 5 seeds, gain 0.65-8.05 sample std (mean 2.8, 24 rounds)",
        "recipe": "`flux2_klein_flowgrpo.toml`",
    }

    @classmethod
    def vae_spatial(cls, vae_cfg: dict[str, Any]) -> int:
        return 2 ** (len(vae_cfg.get("block_out_channels") or [0] * 4) - 1)

    @classmethod
    def patch(cls, transformer_cfg: dict[str, Any]) -> int:
        return 2  # the pipeline's 2x2 patchify of the VAE latent (the transformer's own is 1)

    @classmethod
    def check_model(cls, recipe: Recipe) -> None:
        super().check_model(recipe)
        if cls.configs(recipe.model.path)["index"].get("is_distilled") and recipe.sampling.guidance_scale > 1:
            raise UserInputError(
                f"sampling.guidance_scale: {recipe.model.path} is a distilled FLUX.2-klein (is_distilled in "
                f"its model_index.json), which runs without CFG; set sampling.guidance_scale = 1.0")

    # ------------------------------------------------------------------ schedule, shapes
    def _tokens(self) -> tuple[int, int]:
        s, sp = self.recipe.sampling, self.pipeline.vae_scale_factor
        return s.height // sp // 2, s.width // sp // 2

    def _sigmas(self) -> list[float]:
        h, w = self._tokens()
        n = self.recipe.sampling.num_inference_steps
        return dynamic_sigmas(dict(self.pipeline.scheduler.config), n, flux2_mu(h * w, n))

    @property
    def latent_shape(self) -> tuple[int, int]:
        h, w = self._tokens()
        return (h * w, int(self.experts[0].config.in_channels))

    # ------------------------------------------------------------------ model
    def _encode(self, texts: list[str]) -> Cond:
        emb, _ = self.pipeline.encode_prompt(prompt=list(texts), device=self.device,
                                             max_sequence_length=self.recipe.model.max_sequence_length)
        return emb.to(self.dtype)

    def _forward(self, expert: int, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        h, w = self._tokens()
        grid = x.new_zeros(x.shape[0], x.shape[2], h, w)  # only its shape matters for the ids
        img_ids = self.pipeline._prepare_latent_ids(grid).to(x.device)
        txt_ids = self.pipeline._prepare_text_ids(cond).to(x.device)
        return self.experts[expert](hidden_states=x, timestep=t.to(x.dtype) / 1000, guidance=None,
                                    encoder_hidden_states=cond, txt_ids=txt_ids, img_ids=img_ids,
                                    return_dict=False)[0][:, : x.shape[1]]

    def _decode_batch(self, z: torch.Tensor) -> torch.Tensor:
        import torch

        h, w = self._tokens()
        vae = self.components.vae
        lat = z.view(z.shape[0], h, w, z.shape[2]).permute(0, 3, 1, 2)  # inverse of _pack_latents
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(lat)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(lat)
        lat = self.pipeline._unpatchify_latents(lat * std + mean)
        image = vae.decode(lat.to(vae.dtype), return_dict=False)[0]
        return image.permute(0, 2, 3, 1)[:, None]

    def _blocks(self, model: Any) -> list[Any]:
        return [*model.transformer_blocks, *model.single_transformer_blocks]

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

from unirl_stream.models import loading
from unirl_stream.models.flow import Cond, FlowPolicy, Loaded, check_frames, check_geometry
from unirl_stream.models.tiny import TINY_PREFIX, tiny_config, tiny_layout

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from unirl_stream.recipe import Recipe

HUB_REPO = "stabilityai/stable-diffusion-3.5-medium"
COMPONENTS = ("tokenizer", "tokenizer_2", "tokenizer_3", "text_encoder", "text_encoder_2",
              "text_encoder_3", "vae", "transformer", "scheduler")
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


def vae_scale(vae_cfg: dict[str, Any]) -> int:
    """Spatial factor of an ``AutoencoderKL``: x2 per resolution level after the first."""
    return 2 ** (len(vae_cfg.get("block_out_channels") or [0] * 4) - 1)


class SD3Policy(FlowPolicy):
    """api.Policy for SD3/SD3.5 diffusers checkpoints (``StableDiffusion3Pipeline`` layout)."""

    family = "sd3"
    card = {
        "layouts": "SD3 / SD3.5 (MMDiT, 16-channel VAE x8, patch 2; SD3.5's dual attention; "
                   "`tiny:sd3`)",
        "text encoders": "CLIP-L + CLIP-G (pooled and penultimate states) + T5-XXL",
        "LoRA targets": "`" + ", ".join(LORA_TARGETS) + "`",
        "schedule": "static shift (SD3.5: 3)",
        "recipe": "`sd3_flowgrpo_pickscore.toml`, `quickstart_image.toml`",
    }

    @classmethod
    def configs(cls, spec: str) -> dict[str, Any]:
        """Transformer and VAE configs without torch (tiny: from the builder's config)."""
        if spec.startswith(TINY_PREFIX):
            try:
                cfg = tiny_config(tiny_layout(spec))
            except ValueError as e:
                raise loading.UserInputError(str(e)) from None
            return {"transformer": cfg["transformer"], "vae": cfg["vae"]}
        path = loading.locate(spec, COMPONENTS, "SD3", HUB_REPO)
        assert path is not None
        return loading.read_configs(path, ("transformer", "vae"))

    @classmethod
    def check_model(cls, recipe: Recipe) -> None:
        s = recipe.sampling
        check_frames(s.num_frames, None, "SD3")
        cfgs = cls.configs(recipe.model.path)
        if "high" not in recipe.model.lora.experts:
            raise loading.UserInputError(
                f"model.lora.experts = {recipe.model.lora.experts}: SD3 has one transformer ('high')")
        patch = int(cfgs["transformer"].get("patch_size", 2))
        check_geometry(s.height, s.width, vae_scale(cfgs["vae"]), (patch, patch))

    # ------------------------------------------------------------------ construction
    def _load(self, dtype: torch.dtype, vae_dtype: torch.dtype) -> Any:
        from diffusers import StableDiffusion3Pipeline

        path = loading.folder(self.recipe.model.path, COMPONENTS, "SD3", HUB_REPO)
        pipe = StableDiffusion3Pipeline.from_pretrained(path, dtype=dtype, local_files_only=True)
        if vae_dtype != dtype:
            pipe.vae.to(vae_dtype)
        pipe.set_progress_bar_config(disable=True)
        return Loaded(path=path, pipe=pipe, vae=pipe.vae, transformers=[pipe.transformer])

    def _frozen_modules(self) -> list[Any]:
        p = self.components.pipe
        return [m for m in (p.text_encoder, p.text_encoder_2, p.text_encoder_3, p.vae) if m is not None]

    @property
    def pipeline(self) -> Any:
        """The loaded ``StableDiffusion3Pipeline`` (its transformer carries our adapter)."""
        return self.components.pipe

    # ------------------------------------------------------------------ geometry
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s, sp = self.recipe.sampling, self.pipeline.vae_scale_factor
        return (int(self.experts[0].config.in_channels), s.height // sp, s.width // sp)

    @property
    def media_shape(self) -> tuple[int, int, int, int]:
        s = self.recipe.sampling
        return (1, s.height, s.width, 3)

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

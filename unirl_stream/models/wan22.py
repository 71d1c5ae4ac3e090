"""The ``wan22`` model plugin: Wan2.2 (T2V-A14B two experts, TI2V-5B one) and Wan2.1-layout
checkpoints (one transformer, 16 latent channels) as an api.Policy.

The shared flow-matching core (``flow.py``) does the sampling, replay, CFG, text cache, LoRA
and decoding; this class supplies Wan's ends: the UMT5 text encoder, the experts' velocity
(a timestep per token for TI2V's ``expand_timesteps``), the video latent shape and the VAE's
latent statistics.

Module import is cheap (no torch/diffusers until a policy is built): the validator calls
``Wan22Policy.check(recipe)``, which only looks at the filesystem.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unirl_stream.algorithms.config import SamplingConfig
from unirl_stream.algorithms.schedule import expert_of_steps, sigma_grid
from unirl_stream.algorithms.selection import reachable_steps
from unirl_stream.api import UserInputError
from unirl_stream.models import loading
from unirl_stream.models.checks import check_frames, check_geometry
from unirl_stream.models.flow import Cond, FlowOptions, FlowPolicy
from unirl_stream.models.lora import EXPERT_NAMES

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from unirl_stream.recipe import Recipe

Wan22Options = FlowOptions  # Wan takes the core's options only


def _check_geometry(recipe: Recipe, cfgs: dict[str, Any]) -> None:
    s = recipe.sampling
    spatial = int(cfgs["vae"].get("scale_factor_spatial") or 8)
    patch = cfgs["transformer"].get("patch_size") or [1, 2, 2]
    check_geometry(s.height, s.width, spatial, (int(patch[1]), int(patch[2])))
    check_frames(s.num_frames, int(cfgs["vae"].get("scale_factor_temporal") or 4), "Wan")


def experts_reached(sampling: SamplingConfig, boundary_ratio: float | None, num_experts: int = 2) -> set[str]:
    """Names of the experts ("high", "low") that some SDE step of ``sampling`` runs on."""
    steps = reachable_steps(sampling.sde, sampling.num_inference_steps)
    sig = sigma_grid(sampling.num_inference_steps, sampling.shift)
    return {EXPERT_NAMES[e] for e in expert_of_steps(sig, boundary_ratio, steps, num_experts)}


def _check_experts_reached(recipe: Recipe, index: dict[str, Any], two: bool) -> None:
    """Every expert that gets an adapter must see at least one SDE step, or its LoRA would
    never receive gradient (the UniRL recipe's fraction [0, 0.2] only reaches ``high``)."""
    s, m = recipe.sampling, recipe.model
    if not two or s.sde.selection == "none":  # ODE-rollout algorithms train at every noise level
        return
    boundary = m.boundary_ratio if m.boundary_ratio is not None else index.get("boundary_ratio")
    reached = experts_reached(s, boundary)
    idle = [e for e in m.lora.experts if e not in reached]
    if idle:
        steps = reachable_steps(s.sde, s.num_inference_steps)
        raise UserInputError(
            f"model.lora.experts trains {idle} but no SDE step reaches it: steps {steps} of "
            f"{s.num_inference_steps} (shift {s.shift}, boundary_ratio {boundary}) all run on "
            f"{sorted(reached)}; widen sampling.sde.fraction or set model.lora.experts = {sorted(reached)}"
        )


class Wan22Policy(FlowPolicy):
    """api.Policy for Wan2.2 (and Wan2.1-layout) diffusers checkpoints."""

    Config = Wan22Options
    family = "wan22"
    card = {
        "layouts": "Wan2.2 T2V-A14B (two experts, boundary 0.875; `tiny:two_expert`), TI2V-5B "
                   "(48 channels, a timestep per token; `tiny:ti2v`), Wan2.1 (one transformer, 16 "
                   "channels; `tiny:wan21`)",
        "text encoders": "UMT5-XXL",
        "LoRA targets": "`to_q, to_k, to_v, to_out.0` (self- and cross-attention), per expert",
        "schedule": "static shift (recipe: 5)",
        "learning test": "brightness, 3 seeds (tests/core/test_reference_loop.py); quickstart through Ray",
        "recipe": "`wan22_dancegrpo.toml`, `quickstart.toml`",
    }
    _pipe: Any = None  # the WanPipeline view, built on first use

    # ------------------------------------------------------------------ validation
    @classmethod
    def check_model(cls, recipe: Recipe) -> None:
        """Weights present, experts and SDE selection consistent, geometry the VAE takes."""
        m = recipe.model
        cfgs = loading.component_configs(m.path)
        two = loading._present(cfgs["index"], "transformer_2")
        if "high" not in m.lora.experts and not two:
            # "low" alone on a one-transformer model would train nothing ("low" is ignored there).
            raise UserInputError(f"model.lora.experts = {m.lora.experts}: {m.path} has one transformer ('high') only")
        _check_experts_reached(recipe, cfgs["index"], two)
        _check_geometry(recipe, cfgs)

    # ------------------------------------------------------------------ construction
    def _load(self, dtype: torch.dtype, vae_dtype: torch.dtype) -> loading.Components:
        return loading.load_components(self.recipe.model.path, dtype, self.recipe.model.boundary_ratio, vae_dtype)

    def _frozen_modules(self) -> list[Any]:
        return [self.components.text_encoder, self.components.vae]

    def _boundary_ratio(self) -> float | None:
        return self.components.boundary_ratio

    # ------------------------------------------------------------------ geometry
    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        s, vae = self.recipe.sampling, self.components.vae.config
        t = (s.num_frames - 1) // int(vae.scale_factor_temporal) + 1
        sp = int(vae.scale_factor_spatial)
        return (int(self.experts[0].config.in_channels), t, s.height // sp, s.width // sp)

    @property
    def media_shape(self) -> tuple[int, int, int, int]:
        s, vae = self.recipe.sampling, self.components.vae.config
        frames = (self.latent_shape[1] - 1) * int(vae.scale_factor_temporal) + 1
        return (frames, s.height, s.width, 3)

    # ------------------------------------------------------------------ text
    @property
    def pipeline(self) -> Any:
        """A ``WanPipeline`` over the loaded components (prompt encoding; plain inference)."""
        if self._pipe is None:
            from diffusers import WanPipeline

            c = self.components
            self._pipe = WanPipeline(
                tokenizer=c.tokenizer, text_encoder=c.text_encoder, vae=c.vae, scheduler=c.scheduler,
                transformer=self.experts[0], transformer_2=self.experts[1] if len(self.experts) > 1 else None,
                boundary_ratio=c.boundary_ratio, expand_timesteps=c.expand_timesteps,
            )
        return self._pipe

    def _encode(self, texts: list[str]) -> torch.Tensor:
        emb, _ = self.pipeline.encode_prompt(
            prompt=texts, do_classifier_free_guidance=False,
            max_sequence_length=self.recipe.model.max_sequence_length,
            device=self.device, dtype=self.dtype,
        )
        return emb

    # ------------------------------------------------------------------ model
    def _timestep_input(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not self.components.expand_timesteps:
            return t
        # TI2V-5B: one timestep per latent token (all equal for text-to-video).
        p = self.experts[0].config.patch_size
        seq = (x.shape[2] // p[0]) * (x.shape[3] // p[1]) * (x.shape[4] // p[2])
        return t[:, None].expand(-1, seq)

    def _forward(self, expert: int, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        return self.experts[expert](hidden_states=x, timestep=self._timestep_input(t, x),
                                    encoder_hidden_states=cond, return_dict=False)[0]

    def _decode_batch(self, z: torch.Tensor) -> torch.Tensor:
        import torch

        vae = self.components.vae
        c = z.shape[1]
        mean = torch.tensor(vae.config.latents_mean, device=z.device).view(1, c, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std, device=z.device).view(1, c, 1, 1, 1)
        video = vae.decode((z / inv_std + mean).to(vae.dtype), return_dict=False)[0]
        return video.permute(0, 2, 3, 4, 1)  # [b, 3, F, H, W] -> [b, F, H, W, 3]

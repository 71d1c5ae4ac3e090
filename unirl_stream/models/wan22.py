"""The ``wan22`` model plugin: Wan2.2 (T2V-A14B two experts, TI2V-5B one) as an api.Policy.

The same object serves a rollout producer (``rollout``: sample, score, decode once) and a
trainer (``logprobs`` replay with autograd, ``ref_logprobs`` with adapters disabled, LoRA
export/import). The sampler and its kernels are model-agnostic (``algorithms/sampler.py``);
this class supplies the guided velocity of each expert and the text/VAE ends.

Module import is cheap (no torch/diffusers until a policy is built): the validator calls
``Wan22Policy.check(recipe)``, which only looks at the filesystem.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from unirl_stream.algorithms.config import SamplingConfig
from unirl_stream.algorithms.sampler import SamplerSpec, replay, sample
from unirl_stream.algorithms.schedule import expert_of_steps, sigma_grid
from unirl_stream.algorithms.selection import (
    latent_slots,
    num_sde_steps,
    reachable_steps,
    select_steps,
)
from unirl_stream.algorithms.trajectory import REPLAY_FIELDS, field_specs
from unirl_stream.api import FieldSpec, Prompt, UserInputError
from unirl_stream.models import loading
from unirl_stream.models.compile import compile_experts
from unirl_stream.models.lora import (
    EXPERT_NAMES,
    add_lora,
    export_lora,
    import_lora,
    lora_parameters,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from tensordict import TensorDict

    from unirl_stream.recipe import Recipe

Role = Literal["producer", "trainer"]
_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class Wan22Options(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    text_cache_size: int = 64
    """Prompt embeddings kept per process (LRU by prompt id); UMT5-XXL: ~4 MiB each in bf16."""
    vae_dtype: str | None = None
    """VAE dtype (default: model.dtype)."""
    decode_batch: int = 1
    """Samples per VAE decode call (a 480x832x33 decode peaks near 21 GiB; tiny models: more)."""
    tf32: bool = True
    """On CUDA, let fp32 matmuls use TF32 tensor cores. The trainer's LoRA adapters are fp32
    master weights (bf16 would round AdamW steps away) and peft runs them as fp32 GEMMs; TF32
    makes those cheap (producers run them in ``model.lora.producer_dtype``)."""


def _check_geometry(recipe: Recipe, cfgs: dict[str, Any]) -> None:
    s = recipe.sampling
    if (s.num_frames - 1) % 4:
        raise UserInputError(
            f"sampling.num_frames: expected 4k+1 (Wan's VAE compresses time by 4), "
            f"got {s.num_frames}; try {((s.num_frames - 1) // 4) * 4 + 1}"
        )
    spatial = int(cfgs["vae"].get("scale_factor_spatial") or 8)
    patch = cfgs["transformer"].get("patch_size") or [1, 2, 2]
    mult_h, mult_w = spatial * int(patch[1]), spatial * int(patch[2])
    if s.height % mult_h or s.width % mult_w:
        raise UserInputError(
            f"sampling.height: {s.height}x{s.width} (height x width) must be multiples of {mult_h}x{mult_w} "
            f"for this model (VAE x{spatial}, patch {patch[1]}x{patch[2]})"
        )


def experts_reached(sampling: SamplingConfig, boundary_ratio: float | None, num_experts: int = 2) -> set[str]:
    """Names of the experts ("high", "low") that some SDE step of ``sampling`` runs on."""
    steps = reachable_steps(sampling.sde, sampling.num_inference_steps)
    sig = sigma_grid(sampling.num_inference_steps, sampling.shift)
    return {EXPERT_NAMES[e] for e in expert_of_steps(sig, boundary_ratio, steps, num_experts)}


def _check_experts_reached(recipe: Recipe, index: dict[str, Any], two: bool) -> None:
    """Every expert that gets an adapter must see at least one SDE step, or its LoRA would
    never receive gradient (the UniRL recipe's fraction [0, 0.2] only reaches ``high``)."""
    if not two:
        return
    s, m = recipe.sampling, recipe.model
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


class Wan22Policy:
    """api.Policy for Wan2.2 diffusers checkpoints."""

    Config = Wan22Options

    # ------------------------------------------------------------------ validation
    @classmethod
    def check(cls, recipe: Recipe) -> None:
        """Filesystem and config checks only (no torch): weights present, experts and SDE
        selection consistent. Raises UserInputError naming what is wrong and how to fix it."""
        m, s = recipe.model, recipe.sampling
        cfgs = loading.component_configs(m.path)
        two = loading._present(cfgs["index"], "transformer_2")
        if not m.lora.enabled:
            raise UserInputError("model.lora.enabled = false: wan22 trains LoRA adapters only")
        if "high" not in m.lora.experts and not two:
            # "low" alone on a one-transformer model would train nothing ("low" is ignored there).
            raise UserInputError(f"model.lora.experts = {m.lora.experts}: {m.path} has one transformer ('high') only")
        try:
            num_sde_steps(s.sde, s.num_inference_steps)
        except ValueError as e:
            raise UserInputError(str(e)) from None
        _check_experts_reached(recipe, cfgs["index"], two)
        if s.eta <= 0:
            raise UserInputError(f"sampling.eta: must be > 0 for SDE steps, got {s.eta}")
        _check_geometry(recipe, cfgs)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_recipe(cls, recipe: Recipe, device: str | None = None, role: Role = "trainer") -> Wan22Policy:
        opts = msgspec.convert(recipe.model.options, Wan22Options)
        return cls(recipe, device=device, options=opts, role=role)

    def __init__(self, recipe: Recipe, device: str | None = None, options: Wan22Options | None = None,
                 role: Role = "trainer") -> None:
        import torch

        self.recipe = recipe
        self.options = options or Wan22Options()
        m, s = recipe.model, recipe.sampling
        self.dtype = getattr(torch, _DTYPES[m.dtype])
        dev = device or m.device
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.options.tf32
        vae_dtype = getattr(torch, self.options.vae_dtype) if self.options.vae_dtype else self.dtype
        c = loading.load_components(m.path, self.dtype, m.boundary_ratio, vae_dtype)
        self.components = c
        self.experts: list[Any] = c.transformers
        self.trained = {EXPERT_NAMES[i]: t for i, t in enumerate(self.experts) if EXPERT_NAMES[i] in m.lora.experts}
        # A producer never trains: its adapters run in the inference dtype, and load_weights
        # copies each published fp32 blob into them (rounding once per load, not per GEMM).
        adapter_dtype = self.dtype if role == "producer" and m.lora.producer_dtype == "model" else torch.float32
        for name, model in self.trained.items():
            add_lora(model, m.lora, recipe.run.seed, name, adapter_dtype)
        for mod in (c.text_encoder, c.vae, *self.experts):
            mod.eval()
            if mod not in self.trained.values():
                mod.requires_grad_(False)
        c.text_encoder.to(self.device)
        c.vae.to(self.device)
        for model in self.experts:
            model.to(self.device)
            if m.gradient_checkpointing and model in self.trained.values():
                model.enable_gradient_checkpointing()
        self.compiled = compile_experts(self.experts, m, self.device.type)
        self.sigmas = sigma_grid(s.num_inference_steps, s.shift)
        g2 = s.guidance_scale if s.guidance_scale_2 is None else s.guidance_scale_2
        self.guidance = [s.guidance_scale, g2][: len(self.experts)]
        self.spec = SamplerSpec(s.sde.kernel, s.eta, c.boundary_ratio, len(self.experts))
        self.k = num_sde_steps(s.sde, s.num_inference_steps)
        self.slots = latent_slots(s.sde, s.num_inference_steps)
        self._text_cache: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._neg: torch.Tensor | None = None
        self._pipe: Any = None

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

    def field_specs(self) -> list[FieldSpec]:
        return field_specs(self.recipe.sampling.num_inference_steps, self.k, self.slots,
                           self.latent_shape, self.media_shape)

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
        import torch

        with torch.no_grad():  # encode_prompt keeps autograd on otherwise (FACTS.md)
            emb, _ = self.pipeline.encode_prompt(
                prompt=texts, do_classifier_free_guidance=False,
                max_sequence_length=self.recipe.model.max_sequence_length,
                device=self.device, dtype=self.dtype,
            )
        return emb

    def embed(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """Prompt embeddings [B, L, D], recomputed on demand with an LRU cache by prompt id
        (trajectories don't carry them: one per prompt, not per sample)."""
        import torch

        keys = [(p.id, p.text) for p in prompts]
        todo = list(dict.fromkeys(k for k in keys if k not in self._text_cache))
        if todo:
            for k, e in zip(todo, self._encode([t for _, t in todo]), strict=True):
                self._text_cache[k] = e
        for k in keys:
            self._text_cache.move_to_end(k)
        out = torch.stack([self._text_cache[k] for k in keys])
        while len(self._text_cache) > max(self.options.text_cache_size, len(set(keys))):
            self._text_cache.popitem(last=False)
        return out

    def _negative(self) -> torch.Tensor:
        if self._neg is None:
            self._neg = self._encode([self.recipe.sampling.negative_prompt])
        return self._neg

    # ------------------------------------------------------------------ model
    def _timestep_input(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not self.components.expand_timesteps:
            return t
        # TI2V-5B: one timestep per latent token (all equal for text-to-video).
        p = self.experts[0].config.patch_size
        seq = (x.shape[2] // p[0]) * (x.shape[3] // p[1]) * (x.shape[4] // p[2])
        return t[:, None].expand(-1, seq)

    def _velocity_fn(self, emb: torch.Tensor) -> Any:
        import torch

        def velocity(expert: int, x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            model, g = self.experts[expert], self.guidance[expert]
            xin, tt, enc = x.to(self.dtype), self._timestep_input(t, x), emb[rows]
            if g <= 1.0:  # diffusers' rule: guidance <= 1 runs the conditional branch only
                return model(hidden_states=xin, timestep=tt, encoder_hidden_states=enc, return_dict=False)[0].float()
            neg = self._negative().expand(len(rows), -1, -1)
            out = model(hidden_states=torch.cat([xin, xin]), timestep=torch.cat([tt, tt]),
                        encoder_hidden_states=torch.cat([enc, neg]), return_dict=False)[0].float()
            cond, uncond = out.chunk(2)
            return uncond + g * (cond - uncond)

        return velocity

    @contextmanager
    def _adapters_disabled(self) -> Iterator[None]:
        for model in self.trained.values():
            model.disable_adapters()
        try:
            yield
        finally:
            for model in self.trained.values():
                model.enable_adapters()

    @contextmanager
    def _train_mode(self) -> Iterator[None]:
        # Only LoRA dropout differs between modes; with dropout 0 (exact replay) nothing to do.
        active = self.recipe.model.lora.dropout > 0
        for model in self.trained.values() if active else ():
            model.train()
        try:
            yield
        finally:
            for model in self.trained.values() if active else ():
                model.eval()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """fp32 latents [B, C, T, h, w] -> uint8 video [B, F, H, W, 3], ``decode_batch`` at a time."""
        import torch

        vae = self.components.vae
        c = latents.shape[1]
        mean = torch.tensor(vae.config.latents_mean, device=latents.device).view(1, c, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std, device=latents.device).view(1, c, 1, 1, 1)
        out = []
        step = max(1, self.options.decode_batch)
        with torch.no_grad():
            for b in range(0, latents.shape[0], step):
                z = latents[b : b + step] / inv_std + mean
                video = vae.decode(z.to(vae.dtype), return_dict=False)[0].float()
                u8 = ((video.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
                out.append(u8.permute(0, 2, 3, 4, 1).cpu())
        return torch.cat(out)

    # ------------------------------------------------------------------ api.Policy
    def rollout(self, prompts: Sequence[Prompt], seeds: Sequence[int], version: int = 0) -> TensorDict:
        import torch
        from tensordict import TensorDict

        if len(prompts) != len(seeds) or not prompts:
            raise ValueError(f"rollout: {len(prompts)} prompts and {len(seeds)} seeds")
        n = self.recipe.sampling.num_inference_steps
        steps = [select_steps(self.recipe.sampling.sde, n, int(s), version) for s in seeds]
        with torch.no_grad():
            emb = self.embed(prompts)
            res = sample(self._velocity_fn(emb), self.spec, [int(s) for s in seeds], steps,
                         self.slots, self.latent_shape, self.sigmas, self.device)
            media = self.decode(res.final)
        B = len(prompts)
        fields = {
            "seed": torch.tensor([int(s) for s in seeds], dtype=torch.int64),
            "sigmas": res.sigmas, "timesteps": res.timesteps, "sde_steps": res.sde_steps,
            "experts": res.experts, "latent_steps": res.latent_steps, "latents": res.latents,
            "log_probs": res.log_probs, "media": media,
        }
        return TensorDict({k: v.cpu() for k, v in fields.items()}, batch_size=[B])

    def logprobs(self, prompts: Sequence[Prompt], batch: TensorDict,
                 columns: Sequence[int] | None = None) -> torch.Tensor:
        """Replay log-probs [B, K] (or [B, len(columns)]) with autograd on the adapters."""
        td = batch.select(*REPLAY_FIELDS).to(self.device)
        with self._train_mode():
            return replay(self._velocity_fn(self.embed(prompts)), self.spec, td, columns)

    def ref_logprobs(self, prompts: Sequence[Prompt], batch: TensorDict,
                     columns: Sequence[int] | None = None) -> torch.Tensor:
        import torch

        td = batch.select(*REPLAY_FIELDS).to(self.device)
        with torch.no_grad(), self._adapters_disabled():
            return replay(self._velocity_fn(self.embed(prompts)), self.spec, td, columns)

    def fsdp_units(self) -> list[tuple[Any, list[Any]]]:
        """FSDP2 units: every expert with its transformer blocks (each block one unit, so one
        block's full weights are alive at a time, as gradient checkpointing runs per block)."""
        return [(model, list(model.blocks)) for model in self.experts]

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        return [p for model in self.trained.values() for p in lora_parameters(model)]

    def export_weights(self) -> bytes:
        return export_lora(self.trained)

    def load_weights(self, blob: bytes) -> None:
        import torch

        with torch.no_grad():
            import_lora(blob, self.trained)

"""The shared flow-matching policy core: what every diffusers flow-matching plugin has in common.

A model plugin subclasses ``FlowPolicy`` and supplies four things:

- ``_load``: its components through their real ``from_pretrained`` (weights never downloaded),
  and ``_frozen_modules`` (text encoders, VAE: never trained, moved to the device);
- ``_encode(texts)``: its text encoders, returning the conditioning of a batch of prompts as
  one tensor or a dict of tensors with the prompt on dim 0 (cached per prompt id here);
- ``_forward(expert, x, t, cond)``: its velocity (one transformer call, no guidance), with its
  latent packing inside;
- ``latent_shape`` / ``media_shape`` / ``_decode_batch`` and its defaults (``family``,
  ``hub_repo``, the components of its folder, ``check_model``).

The core does the rest identically for every model: the LRU text-embedding cache, CFG batching
(conditional and negative rows in one call), LoRA on the recipe's named targets of every trained
transformer, the pinned sigma schedule (``_sigmas``; dynamic-shift models override it), the
sampler and its replay, VAE decoding in batches to uint8 media, weight export/import, and the
``check(recipe)`` run by the validator before any actor starts.

Module import is cheap: no torch/diffusers at module level (the validator imports plugins).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import msgspec

from unirl_stream.algorithms.base import rollout_spec
from unirl_stream.algorithms.sampler import SamplerSpec, replay, sample
from unirl_stream.algorithms.schedule import route, sigma_grid
from unirl_stream.algorithms.selection import (
    latent_slots,
    num_sde_steps,
    select_steps,
    window_start,
)
from unirl_stream.algorithms.trajectory import REPLAY_FIELDS, field_specs
from unirl_stream.api import FieldSpec, Prompt, UserInputError
from unirl_stream.models import checkpointing
from unirl_stream.models.attention import set_backend as set_attention
from unirl_stream.models.checks import check_common
from unirl_stream.models.compile import compile_experts
from unirl_stream.models.graphs import GraphedCalls
from unirl_stream.models.lora import (
    EXPERT_NAMES,
    add_lora,
    export_lora,
    fuse_adapters,
    import_lora,
    lora_parameters,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from tensordict import TensorDict

    from unirl_stream.recipe import Recipe

Role = Literal["producer", "trainer"]
Cond = Any  # torch.Tensor | dict[str, torch.Tensor], prompts on dim 0


class FlowOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    text_cache_size: int = 64
    """Prompt embeddings kept per process (LRU by prompt id); a UMT5-XXL or T5-XXL embedding
    is ~4 MiB in bf16."""
    vae_dtype: str | None = None
    """VAE dtype (default: model.dtype)."""
    decode_batch: int = 1
    """Samples per VAE decode call (a 480x832x33 decode peaks near 21 GiB; tiny models: more)."""
    tf32: bool = True
    """On CUDA, let fp32 matmuls use TF32 tensor cores (the fp32 adapter GEMMs of
    ``model.lora.trainer_dtype`` / ``producer_dtype = "float32"``, fp32 models)."""


@dataclass
class Loaded:
    """What a pipeline-loading plugin keeps: the diffusers pipeline and what the core reads."""

    path: Path
    pipe: Any  # the diffusers pipeline (text encoding, plain inference)
    vae: Any
    transformers: list[Any]


def _cat(a: Cond, b: Cond) -> Cond:
    import torch

    if isinstance(a, dict):
        return {k: torch.cat([a[k], b[k]]) for k in a}
    return torch.cat([a, b])


def _rows(c: Cond, rows: Any) -> Cond:
    return {k: v[rows] for k, v in c.items()} if isinstance(c, dict) else c[rows]


def _expand(c: Cond, n: int) -> Cond:
    def grow(v: torch.Tensor) -> torch.Tensor:
        return v.expand(n, *v.shape[1:])

    return {k: grow(v) for k, v in c.items()} if isinstance(c, dict) else grow(c)


def _stack(items: list[Cond]) -> Cond:
    import torch

    if isinstance(items[0], dict):
        return {k: torch.stack([i[k] for i in items]) for k in items[0]}
    return torch.stack(items)


def _split(c: Cond, n: int) -> list[Cond]:
    if isinstance(c, dict):
        return [{k: v[i] for k, v in c.items()} for i in range(n)]
    return [c[i] for i in range(n)]


class FlowPolicy:
    """api.Policy over a diffusers flow-matching model; subclasses supply the model ends."""

    Config: ClassVar[type[FlowOptions]] = FlowOptions
    family: ClassVar[str] = "flow"
    card: ClassVar[dict[str, str]]  # docs/models.md row: see models/zoo.py's columns

    # ------------------------------------------------------------------ plugin hooks
    @classmethod
    def check_model(cls, recipe: Recipe) -> None:
        """Model-specific checks (weights present, geometry, frames); UserInputError."""
        raise NotImplementedError

    def _load(self, dtype: torch.dtype, vae_dtype: torch.dtype) -> Any:
        """Components on CPU; must have ``.transformers`` (list) and ``.vae``."""
        raise NotImplementedError

    def _frozen_modules(self) -> list[Any]:
        raise NotImplementedError

    def _encode(self, texts: list[str]) -> Cond:
        raise NotImplementedError

    def _forward(self, expert: int, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        raise NotImplementedError

    def _decode_batch(self, z: torch.Tensor) -> torch.Tensor:
        """fp32 latents of a few samples -> float media [b, F, H, W, 3] in [-1, 1]."""
        raise NotImplementedError

    @property
    def latent_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def media_shape(self) -> tuple[int, int, int, int]:
        raise NotImplementedError

    def _sigmas(self) -> list[float]:
        """The pinned schedule (static shift); dynamic-shift models override this."""
        s = self.recipe.sampling
        return sigma_grid(s.num_inference_steps, s.shift)

    def _boundary_ratio(self) -> float | None:
        return None

    # ------------------------------------------------------------------ validation
    @classmethod
    def check(cls, recipe: Recipe) -> None:
        """Filesystem and config checks only (no torch). Raises UserInputError naming the
        field and how to fix it; the validator runs it before any actor starts."""
        check_common(recipe, cls.family)
        cls.check_model(recipe)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_recipe(cls, recipe: Recipe, device: str | None = None, role: Role = "trainer") -> FlowPolicy:
        opts = msgspec.convert(recipe.model.options, cls.Config)
        return cls(recipe, device=device, options=opts, role=role)

    def __init__(self, recipe: Recipe, device: str | None = None, options: FlowOptions | None = None,
                 role: Role = "trainer") -> None:
        import torch

        self.recipe = recipe
        self.options = options or self.Config()
        m, s = recipe.model, recipe.sampling
        self.dtype = getattr(torch, m.dtype)
        dev = device or m.device
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.options.tf32
        vae_dtype = getattr(torch, self.options.vae_dtype) if self.options.vae_dtype else self.dtype
        self.components = self._load(self.dtype, vae_dtype)
        self.experts: list[Any] = list(self.components.transformers)
        self.trained = {EXPERT_NAMES[i]: t for i, t in enumerate(self.experts) if EXPERT_NAMES[i] in m.lora.experts}
        # A producer never trains: its adapters run in the inference dtype, and load_weights
        # copies each published fp32 blob into them (rounding once per load, not per GEMM).
        adapter_dtype = self.dtype if role == "producer" and m.lora.producer_dtype == "model" else torch.float32
        for name, model in self.trained.items():
            add_lora(model, m.lora, recipe.run.seed, name, adapter_dtype)
            if (m.lora.producer_dtype if role == "producer" else m.lora.trainer_dtype) == "model":
                fuse_adapters(model)
        for mod in (*self._frozen_modules(), *self.experts):
            mod.eval()
            if mod not in self.trained.values():
                mod.requires_grad_(False)
            mod.to(self.device)
        for model in self.trained.values():
            if m.gradient_checkpointing:
                checkpointing.enable(model, m.checkpoint_saves)
        if m.attention != "native":  # diffusers' default needs nothing set
            if self.device.type != "cuda":
                raise UserInputError(f"model.attention = {m.attention!r} needs a CUDA device, this policy runs "
                                     f"on {self.device}")
            set_attention(self.experts, m.attention)
        self.compiled = compile_experts(self.experts, m, self.device.type)
        self.graphs = GraphedCalls(self._forward) if role == "producer" and self._use_graphs() else None
        self.sigmas = self._sigmas()
        g2 = s.guidance_scale if s.guidance_scale_2 is None else s.guidance_scale_2
        self.guidance = [s.guidance_scale, g2][: len(self.experts)]
        self.spec = SamplerSpec(s.sde.kernel, s.eta, self._boundary_ratio(), len(self.experts))
        self.rollout_spec = rollout_spec(recipe)
        self.k = num_sde_steps(s.sde, s.num_inference_steps)
        self.slots = latent_slots(s.sde, s.num_inference_steps)
        self._text_cache: OrderedDict[tuple[str, str], Cond] = OrderedDict()
        self._neg: Cond | None = None

    def _use_graphs(self) -> bool:
        mode = self.recipe.model.cuda_graphs
        if mode == "on" and self.device.type != "cuda":
            raise UserInputError(f"model.cuda_graphs = 'on' needs a CUDA device, this policy runs on {self.device}")
        return mode == "on" or (mode == "auto" and self.device.type == "cuda" and self.compiled == "off")

    def field_specs(self) -> list[FieldSpec]:
        return field_specs(self.recipe.sampling.num_inference_steps, self.k, self.slots,
                           self.latent_shape, self.media_shape, self.rollout_spec.kind)

    # ------------------------------------------------------------------ text
    def embed(self, prompts: Sequence[Prompt]) -> Cond:
        """Prompt conditioning of a batch, recomputed on demand with an LRU cache by prompt id
        (trajectories don't carry it: one per prompt, not per sample)."""
        keys = [(p.id, p.text) for p in prompts]
        todo = list(dict.fromkeys(k for k in keys if k not in self._text_cache))
        if todo:
            import torch

            with torch.no_grad():  # encode_prompt keeps autograd on otherwise (FACTS.md)
                encoded = self._encode([t for _, t in todo])
            for k, e in zip(todo, _split(encoded, len(todo)), strict=True):
                self._text_cache[k] = e
        for k in keys:
            self._text_cache.move_to_end(k)
        out = _stack([self._text_cache[k] for k in keys])
        while len(self._text_cache) > max(self.options.text_cache_size, len(set(keys))):
            self._text_cache.popitem(last=False)
        return out

    def _negative(self) -> Cond:
        if self._neg is None:
            import torch

            with torch.no_grad():
                self._neg = self._encode([self.recipe.sampling.negative_prompt])
        return self._neg

    # ------------------------------------------------------------------ model
    def _velocity_fn(self, cond: Cond, guided: bool = True) -> Any:
        """The sampler's VelocityFn: guided velocity in fp32, CFG rows batched in one call
        (``guided=False``: the conditional branch alone)."""
        import torch

        def velocity(expert: int, x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            g, xin, c = self.guidance[expert] if guided else 1.0, x.to(self.dtype), _rows(cond, rows)
            if g <= 1.0:  # diffusers' rule: guidance <= 1 runs the conditional branch only
                return self._call(expert, xin, t, c).float()
            neg = _expand(self._negative(), len(rows))
            out = self._call(expert, torch.cat([xin, xin]), torch.cat([t, t]), _cat(c, neg)).float()
            cond_v, uncond_v = out.chunk(2)
            return self._guide(cond_v, uncond_v, g)

        return velocity

    def _call(self, expert: int, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """One transformer call: replayed from a CUDA graph on a producer without autograd."""
        import torch

        if self.graphs is not None and not torch.is_grad_enabled():
            return self.graphs(expert, x, t, cond)
        return self._forward(expert, x, t, cond)

    def _guide(self, cond_v: torch.Tensor, uncond_v: torch.Tensor, g: float) -> torch.Tensor:
        """Classifier-free guidance (models with their own rule override this)."""
        return uncond_v + g * (cond_v - uncond_v)

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
        """fp32 latents [B, ...] -> uint8 media [B, F, H, W, 3], ``decode_batch`` at a time."""
        import torch

        out = []
        step = max(1, self.options.decode_batch)
        with torch.no_grad():
            for b in range(0, latents.shape[0], step):
                out.append(self.decode_frames(latents[b : b + step]).to(torch.uint8).cpu())
        return torch.cat(out)

    def decode_frames(self, latents: torch.Tensor) -> torch.Tensor:
        """fp32 latents -> float frames [B, F, H, W, 3] on the uint8 scale, with autograd
        when the caller's grad mode is on (reward-feedback learning): rounded to integers like
        the media, by a straight-through rounding (forward rounds, backward is identity)."""
        x = (self._decode_batch(latents).float().clamp(-1, 1) + 1.0) * 127.5
        return x + (x.round() - x).detach()

    def velocity(self, prompts: Sequence[Prompt], x: torch.Tensor, timesteps: torch.Tensor,
                 guided: bool = False) -> torch.Tensor:
        """fp32 velocity of latents ``x`` [B, ...] at per-row model timesteps [B] (1000 sigma,
        on the host), each row on the expert of its noise level; autograd on the adapters
        when the caller's grad mode is on. ``guided``: with the recipe's CFG, as sampling runs;
        else the conditional branch alone (DiffusionNFT trains CFG-free)."""
        import torch

        fn = self._velocity_fn(self.embed(prompts), guided)
        t_host = timesteps.detach().float().cpu()
        experts = [route(float(t), self.spec.boundary_ratio, self.spec.num_experts) for t in t_host.tolist()]
        out = torch.zeros(x.shape, dtype=torch.float32, device=self.device)
        with self._train_mode():
            for e in sorted(set(experts)):
                rows = torch.tensor([b for b, ex in enumerate(experts) if ex == e])
                dev_rows = rows.to(self.device)
                v = fn(e, x[dev_rows].to(self.device), t_host[rows].to(self.device), dev_rows)
                out = out.index_put((dev_rows,), v)
        return out

    # ------------------------------------------------------------------ api.Policy
    def rollout(self, prompts: Sequence[Prompt], seeds: Sequence[int], version: int = 0) -> TensorDict:
        """One trajectory per (prompt, seed) with the current weights, which are policy
        ``version`` (it places MixGRPO's window), no grad."""
        import torch
        from tensordict import TensorDict

        if len(prompts) != len(seeds) or not prompts:
            raise ValueError(f"rollout: {len(prompts)} prompts and {len(seeds)} seeds")
        n = self.recipe.sampling.num_inference_steps
        steps = [select_steps(self.recipe.sampling.sde, n, int(s), version) for s in seeds]
        keep = [self._kept(n, int(s)) for s in seeds]
        with torch.no_grad():
            cond = self.embed(prompts)
            res = sample(self._velocity_fn(cond), self.spec, [int(s) for s in seeds], steps,
                         self.slots, self.latent_shape, self.sigmas, self.device, keep)
            media = self.decode(res.final)
        B = len(prompts)
        fields = {
            "seed": torch.tensor([int(s) for s in seeds], dtype=torch.int64),
            "sigmas": res.sigmas, "timesteps": res.timesteps, "sde_steps": res.sde_steps,
            "experts": res.experts, "latent_steps": res.latent_steps, "latents": res.latents,
            "log_probs": res.log_probs, "media": media,
        }
        names = {f.name for f in self.field_specs()}
        return TensorDict({k: v.cpu() for k, v in fields.items() if k in names}, batch_size=[B])

    def _kept(self, num_steps: int, seed: int) -> tuple[int, ...]:
        """The latent an ODE rollout keeps: its clean latent, or its gradient window's start."""
        spec = self.rollout_spec
        if spec.kind == "ode":
            return (num_steps,)
        return (window_start(spec.window, seed),) if spec.kind == "window" else ()

    def logprobs(self, prompts: Sequence[Prompt], batch: TensorDict,
                 columns: Sequence[int] | None = None, with_means: bool = False) -> Any:
        """Replay log-probs [B, K] (or [B, len(columns)]) with autograd on the adapters;
        ``with_means``: (log-probs, the steps' Gaussian means) as ``sampler.replay`` gives."""
        td = batch.select(*REPLAY_FIELDS)  # moved to the device by replay, what it scores only
        with self._train_mode():
            return replay(self._velocity_fn(self.embed(prompts)), self.spec, td, columns, self.device,
                          with_means=with_means)

    def ref_logprobs(self, prompts: Sequence[Prompt], batch: TensorDict,
                     columns: Sequence[int] | None = None) -> torch.Tensor:
        import torch

        td = batch.select(*REPLAY_FIELDS)
        with torch.no_grad(), self._adapters_disabled():
            return replay(self._velocity_fn(self.embed(prompts)), self.spec, td, columns, self.device)

    def fsdp_units(self) -> list[tuple[Any, list[Any]]]:
        """FSDP2 units: every transformer with its repeated blocks (one block's full weights
        alive at a time, as gradient checkpointing runs per block)."""
        return [(model, list(self._blocks(model))) for model in self.experts]

    def _blocks(self, model: Any) -> Iterable[Any]:
        return model.blocks

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        return [p for model in self.trained.values() for p in lora_parameters(model)]

    def export_weights(self) -> bytes:
        return export_lora(self.trained)

    def load_weights(self, blob: bytes) -> None:
        import torch

        with torch.no_grad():
            import_lora(blob, self.trained)

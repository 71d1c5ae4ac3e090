"""``PipelinePolicy``: the flow core for plugins that load one whole diffusers pipeline.

SD3, Qwen-Image, ... load their checkpoint with ``<Pipeline>.from_pretrained`` on a local
folder (or a hub snapshot already in the local cache; never a download) and keep the pipeline
for text encoding and plain inference. This class does that loading, the filesystem checks
(``check`` runs before any actor starts: weights present with the download command, frames,
geometry from the checkpoint's own configs) and freezes every component but the transformer.
A plugin adds its text encoding, velocity, latent packing and decode (``flow.FlowPolicy``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

from unirl_stream.api import UserInputError
from unirl_stream.models import loading
from unirl_stream.models.checks import check_frames, check_geometry
from unirl_stream.models.flow import FlowPolicy, Loaded
from unirl_stream.models.tiny import TINY_PREFIX, tiny_config, tiny_layout

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from unirl_stream.recipe import Recipe


class PipelinePolicy(FlowPolicy):
    pipeline_class: ClassVar[str]  # diffusers pipeline class name
    folders: ClassVar[tuple[str, ...]]  # subfolders a complete checkpoint has
    hub_repo: ClassVar[str]  # the checkpoint the download hint names
    temporal: ClassVar[int | None] = None  # video VAE's time factor; None: an image model
    tiny: ClassVar[str]  # its tiny layout, ``tiny:<tiny>``

    @classmethod
    def vae_spatial(cls, vae_cfg: dict[str, Any]) -> int:
        """The VAE's spatial factor from its config (plugins with another VAE override)."""
        raise NotImplementedError

    @classmethod
    def patch(cls, transformer_cfg: dict[str, Any]) -> int:
        return int(transformer_cfg.get("patch_size", 2))

    @classmethod
    def configs(cls, spec: str) -> dict[str, Any]:
        """model_index, transformer, VAE and scheduler configs without torch (tiny: the
        builder's config)."""
        if spec.startswith(TINY_PREFIX):
            try:
                layout = tiny_layout(spec)
            except ValueError as e:
                raise UserInputError(str(e)) from None
            if layout != cls.tiny:
                raise UserInputError(f"model.path: {spec} is not a {cls.family} model; its tiny model is "
                                     f"tiny:{cls.tiny} (or set model.name to the plugin of {spec})")
            cfg = tiny_config(layout)
            return {"index": cfg.get("index", {}), "transformer": cfg["transformer"], "vae": cfg["vae"],
                    "scheduler": cfg["scheduler"]}
        path = loading.locate(spec, cls.folders, cls.family, cls.hub_repo)
        assert path is not None
        cfgs = {"index": loading.model_index(path), **loading.read_configs(path, ("transformer", "vae"))}
        sched = path / "scheduler" / "scheduler_config.json"
        cfgs["scheduler"] = json.loads(sched.read_text(encoding="utf-8")) if sched.is_file() else {}
        return cfgs

    @classmethod
    def check_model(cls, recipe: Recipe) -> None:
        s, m = recipe.sampling, recipe.model
        check_frames(s.num_frames, cls.temporal, cls.family)
        cfgs = cls.configs(m.path)
        if "high" not in m.lora.experts:
            raise UserInputError(f"model.lora.experts = {m.lora.experts}: {cls.family} has one transformer ('high')")
        patch = cls.patch(cfgs["transformer"])
        check_geometry(s.height, s.width, cls.vae_spatial(cfgs["vae"]), (patch, patch))

    # ------------------------------------------------------------------ construction
    def _load(self, dtype: torch.dtype, vae_dtype: torch.dtype) -> Loaded:
        import diffusers

        path = loading.folder(self.recipe.model.path, self.folders, self.family, self.hub_repo)
        cls = getattr(diffusers, self.pipeline_class)
        pipe = cls.from_pretrained(path, dtype=dtype, local_files_only=True)
        if vae_dtype != dtype:
            pipe.vae.to(vae_dtype)
        pipe.set_progress_bar_config(disable=True)
        return Loaded(path=path, pipe=pipe, vae=pipe.vae, transformers=[pipe.transformer])

    def _frozen_modules(self) -> list[Any]:
        import torch

        pipe = self.components.pipe
        return [m for name, m in pipe.components.items()
                if isinstance(m, torch.nn.Module) and name != "transformer"]

    @property
    def pipeline(self) -> Any:
        """The loaded diffusers pipeline (its transformer carries our adapter)."""
        return self.components.pipe

    @property
    def media_shape(self) -> tuple[int, int, int, int]:
        s = self.recipe.sampling
        return (1, s.height, s.width, 3)

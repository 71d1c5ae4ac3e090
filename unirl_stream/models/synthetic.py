"""A synthetic policy with calibrated costs: the pipeline's stand-in for a diffusion model.

It is a real (tiny) stochastic policy, so the loss, the replay and the learning are real:
a trajectory is a K-step Gaussian random walk in D dimensions whose step means are the
trainable parameters; per-step log-probs are recorded at sampling time and replayed with
autograd by the trainer. The media is an image whose brightness follows the walk's end
point, so the ``brightness`` reward can be learned. ``rollout_s`` / ``train_s`` add a fixed
cost per sample (``time.sleep``: it holds no CPU, so stage overlap can be measured on a
2-core machine without the stages competing for cores).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from unirl_stream.api import FieldSpec, Prompt


class SyntheticConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    dim: Annotated[int, Meta(ge=1)] = 16
    steps: Annotated[int, Meta(ge=1)] = 4
    sigma: Annotated[float, Meta(gt=0)] = 0.5
    image_size: Annotated[int, Meta(ge=1)] = 8
    rollout_s: Annotated[float, Meta(ge=0)] = 0.0
    """Extra seconds per sampled trajectory."""
    train_s: Annotated[float, Meta(ge=0)] = 0.0
    """Extra seconds per sample and update in the trainer's replay."""


class SyntheticPolicy:
    Config = SyntheticConfig

    def __init__(self, cfg: SyntheticConfig, seed: int = 0) -> None:
        import torch

        self.cfg = cfg
        self.mu = torch.nn.Parameter(torch.zeros(cfg.steps, cfg.dim))

    @classmethod
    def from_recipe(cls, recipe: Any, device: str | None = None, role: str = "trainer") -> SyntheticPolicy:
        return cls(msgspec.convert(recipe.model.options, SyntheticConfig), recipe.run.seed)

    @classmethod
    def check(cls, recipe: Any) -> None:
        """Nothing to download."""

    def field_specs(self) -> list[FieldSpec]:
        c = self.cfg
        return [
            FieldSpec("walk", "float32", (c.steps + 1, c.dim)),
            FieldSpec("log_probs", "float32", (c.steps,)),
            FieldSpec("media", "uint8", (1, c.image_size, c.image_size, 3)),
        ]

    def _step_logprob(self, walk: Any) -> Any:
        import torch

        delta = walk[:, 1:] - walk[:, :-1]
        var = self.cfg.sigma**2
        lp = -((delta - self.mu) ** 2) / (2 * var) - math.log(self.cfg.sigma) - 0.5 * math.log(2 * math.pi)
        return lp.mean(dim=-1).to(torch.float32)

    def rollout(self, prompts: Sequence[Prompt], seeds: Sequence[int], version: int = 0) -> Any:
        import torch
        from tensordict import TensorDict

        c = self.cfg
        walks = []
        with torch.no_grad():
            for seed in seeds:
                g = torch.Generator().manual_seed(int(seed))
                eps = torch.randn(c.steps, c.dim, generator=g)
                steps = self.mu.detach() + c.sigma * eps
                walks.append(torch.cat([torch.zeros(1, c.dim), torch.cumsum(steps, 0)]))
            walk = torch.stack(walks)
            lp = self._step_logprob(walk)
        level = torch.sigmoid(walk[:, -1].mean(-1) / math.sqrt(c.steps))  # [B] in (0, 1)
        media = (level * 255).round().to(torch.uint8)[:, None, None, None, None]
        media = media.expand(-1, 1, c.image_size, c.image_size, 3).contiguous()
        if c.rollout_s:
            time.sleep(c.rollout_s * len(seeds))
        return TensorDict({"walk": walk, "log_probs": lp, "media": media}, batch_size=[len(seeds)])

    def logprobs(self, prompts: Sequence[Prompt], batch: Any) -> Any:
        if self.cfg.train_s:
            time.sleep(self.cfg.train_s * batch.batch_size[0])
        return self._step_logprob(batch["walk"])

    def ref_logprobs(self, prompts: Sequence[Prompt], batch: Any) -> Any:
        import torch

        with torch.no_grad():
            saved = self.mu.detach().clone()
            self.mu.data.zero_()
            try:
                return self._step_logprob(batch["walk"])
            finally:
                self.mu.data.copy_(saved)

    def trainable_parameters(self) -> Iterable[Any]:
        return [self.mu]

    def export_weights(self) -> bytes:
        from safetensors.torch import save

        return save({"mu": self.mu.detach().contiguous()})

    def load_weights(self, blob: bytes) -> None:
        from safetensors.torch import load

        self.mu.data.copy_(load(bytes(blob))["mu"])

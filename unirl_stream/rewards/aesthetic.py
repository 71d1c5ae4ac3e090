"""LAION aesthetic predictor v2 ("improved aesthetic predictor", C. Schuhmann).

CLIP ViT-L/14 (OpenAI) image embedding, L2-normalized, into a small MLP trained on
SAC + LAION-logos + AVA ratings; the output is a 1-10 style rating. The published head
(``sac+logos+ava1-l14-linearMSE.pth``, a torch state dict) is five Linear layers with
dropout between the first four and no nonlinearity; DDPO uses it as its aesthetic reward.
The head's file is distributed on GitHub, not the hub: ``head`` is a local path (or
owner/repo/file from the local HF cache).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from unirl_stream.api import Prompt, UserInputError
from unirl_stream.rewards.base import DifferentiableFrameScorer, FrameOptions, resolve_device

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from unirl_stream.rewards.clip_common import Rounding

HEAD_URL = "https://github.com/christophschuhmann/improved-aesthetic-predictor"
HEAD_SIZES = (1024, 128, 64, 16, 1)


class AestheticConfig(FrameOptions, kw_only=True, forbid_unknown_fields=True):
    head: str
    """Path of ``sac+logos+ava1-l14-linearMSE.pth`` (from HEAD_URL) or a .safetensors copy."""
    model: str = "openai/clip-vit-large-patch14"
    processor: str = ""
    """Defaults to ``model``."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    def __post_init__(self) -> None:
        if not self.processor:
            self.processor = self.model


def aesthetic_head(embed_dim: int) -> Any:
    """The published MLP; ``layers.{0,2,4,6,7}`` are its Linear layers (state dict keys)."""
    from torch import nn

    class AestheticHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(embed_dim, 1024),
                nn.Dropout(0.2),
                nn.Linear(1024, 128),
                nn.Dropout(0.2),
                nn.Linear(128, 64),
                nn.Dropout(0.1),
                nn.Linear(64, 16),
                nn.Linear(16, 1),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers(x)

    return AestheticHead()


def load_head(path: str, embed_dim: int) -> Any:
    import torch

    from unirl_stream.rewards.clip_common import resolve_file

    file = resolve_file(path, "aesthetic", "head")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        state = torch.load(file, map_location="cpu", weights_only=True)
    head = aesthetic_head(embed_dim)
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise UserInputError(
            f"reward aesthetic: options.head: {file} is not an aesthetic MLP head for a "
            f"{embed_dim}-dim CLIP embedding ({str(e).splitlines()[0]}); get the head from {HEAD_URL}"
        ) from None
    return head.eval().requires_grad_(False)


class Aesthetic(DifferentiableFrameScorer):
    name: ClassVar[str] = "aesthetic"
    Config: ClassVar[type[AestheticConfig]] = AestheticConfig

    def __init__(self, config: AestheticConfig) -> None:
        super().__init__(config)
        from unirl_stream.rewards.clip_common import (
            ImageGeometry,
            load_clip_model,
            load_clip_processor,
        )

        self.device = resolve_device(config.device)
        proc = load_clip_processor(config.processor, self.name, "processor")
        self.geometry = ImageGeometry.from_processor(proc.image_processor)
        self.model = load_clip_model(config.model, self.name, "model", self.device, config.dtype)
        dim = int(self.model.config.projection_dim)
        self.head = load_head(config.head, dim).to(self.device)

    def score_frames(
        self, frames: torch.Tensor, prompts: list[Prompt], rounding: Rounding = "uint8"
    ) -> torch.Tensor:
        import torch

        from unirl_stream.rewards.clip_common import frame_embeds

        b, f = frames.shape[:2]
        emb = frame_embeds(self.model, self.geometry, frames, self.device, rounding).view(b * f, -1)
        # One row at a time: BLAS picks different kernels for different row counts, which
        # made a sample's score depend (at 1e-7) on how many others shared its batch.
        # The head is ~1M multiply-adds a row, nothing next to the ViT-L forward.
        return torch.cat([self.head(emb[i : i + 1]) for i in range(b * f)]).view(b, f)

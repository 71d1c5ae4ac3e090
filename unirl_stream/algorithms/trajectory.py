"""The trajectory record: everything replay needs for one sample, and its TensorDict form.

One ``Trajectory`` per sample. In the store a batch of them is a TensorDict [B] with the
tensor fields below; the string ids are the store's keys (sample id; the prompt id is the
group id's prefix, ``api.prompt_of_group``) and are not duplicated as tensors.

Storage choices (deliberate):
- ``latents`` are fp32 whatever the model dtype: the kernel's mean is computed from x_i in
  fp32 and the log-density scores x_{i+1} in fp32 against a std of ~0.05-0.2; rounding either
  to bf16 (relative error 4e-3) would move log-probs by far more than the replay tolerance.
  Only the endpoints of scored steps are kept (K + 1 latents for contiguous selections).
- ``sigmas``/``timesteps``: the pinned schedule in fp32, the single source of truth.
- text embeddings are NOT stored: the trainer recomputes them per prompt with an LRU cache
  (a UMT5-XXL embedding is 512 x 4096 per prompt, identical for all samples of a group).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from unirl_stream.api import FieldSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from tensordict import TensorDict

# field -> dtype name; the order is the TensorDict's.
TENSOR_FIELDS: dict[str, str] = {
    "seed": "int64",
    "sigmas": "float32",
    "timesteps": "float32",
    "sde_steps": "int64",
    "experts": "int64",
    "latent_steps": "int64",
    "latents": "float32",
    "log_probs": "float32",
    "behavior_version": "int64",
    "media": "uint8",
}
REPLAY_FIELDS: tuple[str, ...] = (
    "sigmas", "timesteps", "sde_steps", "experts", "latent_steps", "latents",
)


@dataclass
class Trajectory:
    prompt_id: str
    sample_id: str
    seed: int
    sigmas: torch.Tensor  # [N + 1] fp32
    timesteps: torch.Tensor  # [N] fp32
    sde_steps: torch.Tensor  # [K] int64, sorted step indices of the scored (SDE) steps
    experts: torch.Tensor  # [K] int64, 0 = transformer (high noise), 1 = transformer_2
    latent_steps: torch.Tensor  # [M] int64, step position of each stored latent
    latents: torch.Tensor  # [M, C, T, H, W] fp32
    log_probs: torch.Tensor  # [K] fp32, behaviour log-probs recorded at rollout
    behavior_version: int
    media: torch.Tensor | None = None  # [F, H, W, 3] uint8


def to_tensordict(records: Sequence[Trajectory]) -> TensorDict:
    import torch
    from tensordict import TensorDict

    data: dict[str, torch.Tensor] = {}
    for name in TENSOR_FIELDS:
        vals = [getattr(r, name) for r in records]
        if name == "media" and any(v is None for v in vals):
            continue
        if name in ("seed", "behavior_version"):
            data[name] = torch.tensor(vals, dtype=torch.int64)
        else:
            data[name] = torch.stack(vals)
    return TensorDict(data, batch_size=[len(records)])


def from_tensordict(td: TensorDict, prompt_ids: Sequence[str], sample_ids: Sequence[str]) -> list[Trajectory]:
    n = td.batch_size[0]
    if len(prompt_ids) != n or len(sample_ids) != n:
        raise ValueError(f"{n} trajectories but {len(prompt_ids)} prompt ids / {len(sample_ids)} sample ids")
    missing = [f for f in TENSOR_FIELDS if f != "media" and f not in td.keys()]
    if missing:
        raise ValueError(f"trajectory TensorDict lacks fields {missing}")
    out = []
    for b in range(n):
        kw = {f.name: None for f in fields(Trajectory)}
        for name in TENSOR_FIELDS:
            if name in td.keys():
                kw[name] = td[name][b]
        kw["seed"], kw["behavior_version"] = int(kw["seed"]), int(kw["behavior_version"])
        out.append(Trajectory(prompt_id=prompt_ids[b], sample_id=sample_ids[b],
                              **{k: v for k, v in kw.items() if k not in ("prompt_id", "sample_id")}))
    return out


def field_specs(num_steps: int, k: int, slots: int, latent_shape: Sequence[int],
                media_shape: Sequence[int]) -> list[FieldSpec]:
    """Store declarations of the trajectory fields (per-sample shapes)."""
    shapes = {
        "seed": (), "sigmas": (num_steps + 1,), "timesteps": (num_steps,), "sde_steps": (k,),
        "experts": (k,), "latent_steps": (slots,), "latents": (slots, *latent_shape),
        "log_probs": (k,), "behavior_version": (), "media": tuple(media_shape),
    }
    return [FieldSpec(name=n, dtype=d, shape=tuple(shapes[n])) for n, d in TENSOR_FIELDS.items()]

"""The trajectory record: everything replay needs for one sample, as store fields.

A batch of trajectories is a TensorDict [B] with the tensor fields below; the string ids
are the store's keys (sample id; the prompt id is the group id's prefix,
``api.prompt_of_group``) and the sampling policy's version is ``SampleMeta.behavior_version``:
neither is duplicated as a tensor.

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

from unirl_stream.api import FieldSpec
from unirl_stream.training import RolloutKind

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
    "media": "uint8",
}
REPLAY_FIELDS: tuple[str, ...] = (
    "sigmas", "timesteps", "sde_steps", "experts", "latent_steps", "latents",
)


SDE_ONLY: tuple[str, ...] = ("sde_steps", "experts", "log_probs")


def field_specs(num_steps: int, k: int, slots: int, latent_shape: Sequence[int],
                media_shape: Sequence[int], kind: RolloutKind = "sde") -> list[FieldSpec]:
    """Store declarations of the trajectory fields (per-sample shapes). ODE rollouts
    (``kind`` ``ode``/``window``) carry no SDE steps, experts or log-probs: their one latent
    slot holds the clean latent or the gradient window's start."""
    shapes = {
        "seed": (), "sigmas": (num_steps + 1,), "timesteps": (num_steps,), "sde_steps": (k,),
        "experts": (k,), "latent_steps": (slots,), "latents": (slots, *latent_shape),
        "log_probs": (k,), "media": tuple(media_shape),
    }
    return [FieldSpec(name=n, dtype=d, shape=tuple(shapes[n])) for n, d in TENSOR_FIELDS.items()
            if kind == "sde" or n not in SDE_ONLY]

"""Checks that need more than types: plugins exist, options decode, files and weights exist.

Runs once per run, in the driver, before any actor starts (and in ``unirl-stream validate``);
everything here is cheap (no model loading). Rules that belong to one model (its VAE's
frame counts, its patch size, its checkpoint layout) are that plugin's ``check(recipe)``.
Every error is ``<file>: <dotted.path>: <reason>`` (UserInputError, CLI exit code 2).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import msgspec

from unirl_stream import registry
from unirl_stream.api import MissingWeightsError, UserInputError
from unirl_stream.data import load_prompts
from unirl_stream.recipe import Recipe, load
from unirl_stream.rewards.differentiable import check_differentiable

_DEVICE = re.compile(r"^(auto|cpu|mps|meta|(cuda|xpu)(:\d+)?)$")


def load_checked(path: str | Path, overrides: list[str] | None = None,
                 check_weights: bool = True) -> tuple[Recipe, list[str]]:
    """Load a recipe file and run every check; returns (recipe, warnings)."""
    recipe = load(path, overrides)
    return recipe, check_recipe(recipe, str(path), check_weights=check_weights)


def check_recipe(recipe: Recipe, where: str, *, check_weights: bool = True) -> list[str]:
    """Raise UserInputError on the first problem; return warnings.

    With ``check_weights=False`` a failing model weights check (the model plugin's
    ``check(recipe)`` classmethod) becomes a warning instead of an error: ``validate`` must
    pass on a machine without the checkpoint, ``run`` must not.
    """
    _check_finite(msgspec.to_builtins(recipe), where, "")
    _check_plugins(recipe, where)
    check_differentiable(recipe, where)  # algorithm.name = "refl": every reward differentiable
    _check_model(recipe, where)
    from unirl_stream.algorithms.base import build

    algorithm = build(recipe)
    kind = _check_rollout(recipe, algorithm, where)
    _check_numerics(recipe, algorithm, kind, where)
    _check_sampling(recipe, where)
    _check_pipeline(recipe, where)
    try:
        load_prompts(recipe.resolve(recipe.data.prompts))
    except UserInputError as e:
        raise UserInputError(f"{where}: data.prompts: {e}") from None
    return _check_model_plugin(recipe, where, strict=check_weights)


def _check_model_plugin(recipe: Recipe, where: str, strict: bool) -> list[str]:
    """The model plugin's own ``check(recipe)``: its weights, its geometry. Missing weights
    are a warning unless ``strict`` (``validate`` runs where the checkpoint is not)."""
    model = registry.load("models", recipe.model.name)
    check = getattr(model, "check", None)
    if check is None:
        return []
    try:
        check(recipe)
    except UserInputError as e:
        text = str(e)
        # Plugins name the key themselves ("sampling.num_frames: ..."); otherwise it is the path.
        if not re.match(r"^[a-z_]+(\.[A-Za-z0-9_\[\]]+)*: ", text):
            text = f"model.path: {text}"
        if strict or not isinstance(e, MissingWeightsError):
            raise UserInputError(f"{where}: {text}") from None
        return [f"{where}: {text} (`validate` passes; `run` will fail until this is fixed)"]
    return []


def _check_finite(value: Any, where: str, path: str) -> None:
    # TOML allows inf and nan; no recipe number means either, and a NaN learning rate or
    # reward weight would only surface as a NaN loss hours into a run.
    if isinstance(value, float) and not math.isfinite(value):
        raise UserInputError(f"{where}: {path}: expected a finite number, got {value}")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, where, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, where, f"{path}[{i}]")


def _check_plugins(recipe: Recipe, where: str) -> None:
    model = registry.load("models", _named(recipe.model.name, "models", where, "model.name"))
    registry.decode_options(model, dict(recipe.model.options), f"{where}: model.options")
    algorithm = registry.load("algorithms", _named(recipe.algorithm.name, "algorithms", where, "algorithm.name"))
    registry.decode_options(algorithm, dict(recipe.algorithm.options), f"{where}: algorithm.options")
    store = registry.load("stores", _named(recipe.store.backend, "stores", where, "store.backend"))
    registry.decode_options(store, recipe.store.options, f"{where}: store.options")
    if not recipe.reward:
        raise UserInputError(f"{where}: reward: at least one [[reward]] table is required")
    for i, spec in enumerate(recipe.reward):
        scorer = registry.load("rewards", _named(spec.name, "rewards", where, f"reward[{i}].name"))
        registry.decode_options(scorer, spec.options, f"{where}: reward[{i}].options")
    for i, stage in enumerate(recipe.pipeline.stages):
        field = f"pipeline.stages[{i}].name"
        cls = registry.load("stages", _named(stage.name, "stages", where, field))
        registry.decode_options(cls, stage.options, f"{where}: pipeline.stages[{i}].options")


def _named(name: str, group: str, where: str, field: str) -> str:
    registry.entry(group, name, where=f"{where}: {field}")
    return name


def _check_model(recipe: Recipe, where: str) -> None:
    m = recipe.model
    if not m.path.strip():
        raise UserInputError(f"{where}: model.path: expected a folder, hub id or tiny:<layout>, got ''")
    if not _DEVICE.match(m.device):
        raise UserInputError(
            f"{where}: model.device: expected auto, cpu, cuda or cuda:N, got {m.device!r}"
        )
    if m.attention.startswith("cudnn") and (m.dtype == "float32" or m.device == "cpu"):
        raise UserInputError(
            f"{where}: model.attention: {m.attention!r} runs bfloat16/float16 models on CUDA only (model.dtype "
            f"{m.dtype!r}, model.device {m.device!r}); use 'native'"
        )
    lora = m.lora
    if lora.enabled and not lora.target_modules:
        raise UserInputError(f"{where}: model.lora.target_modules: empty list with LoRA enabled")
    if lora.enabled and not lora.experts:
        raise UserInputError(f"{where}: model.lora.experts: empty list with LoRA enabled")
    if len(set(lora.experts)) != len(lora.experts):
        raise UserInputError(f"{where}: model.lora.experts: duplicate entries in {lora.experts}")


def _check_numerics(recipe: Recipe, algorithm: Any, kind: str, where: str) -> None:
    """Producers and trainer running the adapter GEMMs in different dtypes (bf16 vs fp32)
    record log-probs that differ by rounding, even at staleness 0: only an objective with its
    own proximal replay keeps its trust region on the trainer's numerics (algorithms/losses.py)."""
    m = recipe.model
    lora = m.lora
    if m.dtype == "float32" or lora.producer_dtype == lora.trainer_dtype or not lora.enabled:
        return
    if kind != "sde":
        return  # no log-prob ratio: rounding in the producers shifts nothing it reads
    if "proximal" not in algorithm.needs:
        raise UserInputError(
            f"{where}: algorithm.name: {recipe.algorithm.name!r} takes its ratio against the producers' "
            f"log-probs, which differ by rounding from the trainer's (model.lora.producer_dtype = "
            f"{lora.producer_dtype!r}, trainer_dtype = {lora.trainer_dtype!r} on a {m.dtype} model); use "
            f"algorithm.name = 'decoupled_grpo' or the same dtype for both"
        )


def _check_rollout(recipe: Recipe, algorithm: Any, where: str) -> str:
    """The sampling settings must produce the samples the algorithm trains on; returns the
    rollout kind (``sde``, ``ode``, ...)."""
    try:  # an algorithm's rollout rejects settings it cannot train on by a dotted ValueError
        kind = algorithm.rollout(recipe.sampling).kind
    except ValueError as e:
        raise UserInputError(f"{where}: {e}") from None
    selection, name = recipe.sampling.sde.selection, recipe.algorithm.name
    if kind == "sde" and selection == "none":
        raise UserInputError(
            f"{where}: sampling.sde.selection: 'none' samples no SDE step, but algorithm.name = "
            f"{name!r} trains on SDE log-probs; choose 'fraction', 'random_k' or 'mixgrpo_window'")
    if kind != "sde" and selection != "none":
        what = "the clean latents of ODE rollouts" if kind == "ode" else "ODE rollouts' gradient windows"
        raise UserInputError(
            f"{where}: sampling.sde.selection: {selection!r} makes SDE steps, but algorithm.name = "
            f"{name!r} trains on {what} (no SDE log-probs); set sampling.sde.selection = 'none'")
    return str(kind)


def _check_sampling(recipe: Recipe, where: str) -> None:
    s = recipe.sampling
    sde = s.sde
    if sde.selection == "none":
        return  # an ODE rollout: the fraction and the kernel are unused
    lo, hi = sde.fraction
    if lo >= hi:
        raise UserInputError(f"{where}: sampling.sde.fraction: expected lo < hi, got [{lo}, {hi}]")
    n = s.num_inference_steps
    # Step i is stochastic when lo <= i / n < hi; none would mean nothing to train.
    in_window = sum(1 for i in range(n) if lo <= i / n < hi)
    if in_window == 0:
        raise UserInputError(
            f"{where}: sampling.sde.fraction: [{lo}, {hi}) selects none of the "
            f"{n} steps (step i is selected when lo <= i/{n} < hi)"
        )
    if sde.selection == "random_k" and sde.k > in_window:
        raise UserInputError(
            f"{where}: sampling.sde.k: expected <= {in_window} (steps inside fraction), got {sde.k}"
        )
    if sde.kernel == "cps_sde":
        _check_cps(s, where)
    if sde.selection == "mixgrpo_window" and sde.window_size > n:
        raise UserInputError(
            f"{where}: sampling.sde.window_size: expected <= num_inference_steps ({n}), "
            f"got {sde.window_size}"
        )


def _check_cps(s: Any, where: str) -> None:
    from unirl_stream.algorithms.selection import reachable_steps

    if s.eta > 1:
        raise UserInputError(
            f"{where}: sampling.eta: cps_sde takes eta in (0, 1] (the fresh noise's share is "
            f"sin(eta pi / 2)), got {s.eta}")
    last = s.num_inference_steps - 1
    if last in reachable_steps(s.sde, s.num_inference_steps):
        raise UserInputError(
            f"{where}: sampling.sde.fraction: cps_sde cannot make the last step ({last}) stochastic "
            f"(its next sigma is 0, so its noise is 0); end the fraction below {last}/{s.num_inference_steps}")


def _check_pipeline(recipe: Recipe, where: str) -> None:
    p = recipe.pipeline
    if p.mode == "sync" and p.max_staleness != 0:
        # sync mode trains each round on the weights that sampled it: staleness is 0 by
        # construction; a nonzero bound there is almost certainly a copy-paste slip.
        raise UserInputError(
            f"{where}: pipeline.max_staleness: sync mode is on-policy, expected 0, got {p.max_staleness}"
        )
    if not p.train_requires:
        raise UserInputError(
            f"{where}: pipeline.train_requires: empty; the trainer needs at least 'advantage'"
        )
    if p.trainer.sharding == "fsdp" and not getattr(registry.load("algorithms", recipe.algorithm.name),
                                                    "supports_fsdp", True):
        raise UserInputError(
            f"{where}: pipeline.trainer.sharding: algorithm {recipe.algorithm.name!r} needs whole adapter "
            "parameters on every rank; use \"replicate\"")
    if p.trainer.sharding == "fsdp" and not hasattr(registry.load("models", recipe.model.name), "fsdp_units"):
        raise UserInputError(
            f"{where}: pipeline.trainer.sharding: model {recipe.model.name!r} names no FSDP units "
            "(fsdp_units); use \"replicate\""
        )
    if p.trainer_workers > 1 and p.backend == "local":
        raise UserInputError(
            f"{where}: pipeline.trainer_workers: the in-process backend runs one trainer rank, "
            f"got {p.trainer_workers}; set pipeline.backend = \"ray\" for a trainer group"
        )
    placements = {"rollout": p.rollout, "reward": p.reward, "trainer": p.trainer}
    placements |= {f"stages[{i}].placement": s.placement for i, s in enumerate(p.stages)}
    for name, placement in placements.items():
        if any(g < 0 for g in placement.gpu_ids):
            raise UserInputError(
                f"{where}: pipeline.{name}.gpu_ids: expected device indices >= 0, "
                f"got {placement.gpu_ids}"
            )
        if bad := [k for k, v in placement.resources.items() if v < 0]:
            raise UserInputError(
                f"{where}: pipeline.{name}.resources.{bad[0]}: expected >= 0, "
                f"got {placement.resources[bad[0]]}"
            )

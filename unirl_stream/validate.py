"""Checks that need more than types: plugins exist, options decode, files and weights exist.

Runs in the driver before any actor starts; everything here is cheap (no model loading).
"""

from __future__ import annotations

from unirl_stream import registry
from unirl_stream.api import UserInputError
from unirl_stream.data import load_prompts
from unirl_stream.recipe import Recipe


def check_recipe(recipe: Recipe, where: str) -> None:
    _check_plugins(recipe, where)
    _check_geometry(recipe, where)
    try:
        load_prompts(recipe.resolve(recipe.data.prompts))
    except UserInputError as e:
        raise UserInputError(f"{where}: data.prompts: {e}") from None
    model = registry.load("models", recipe.model.name)
    check = getattr(model, "check", None)
    if check is not None:
        try:
            check(recipe)
        except UserInputError as e:
            raise UserInputError(f"{where}: model.path: {e}") from None


def _check_plugins(recipe: Recipe, where: str) -> None:
    model = registry.load("models", _named(recipe.model.name, "models", where, "model.name"))
    registry.decode_options(model, recipe.model.options, f"{where}: model.options")
    _named(recipe.algorithm.name, "algorithms", where, "algorithm.name")
    store = registry.load("stores", _named(recipe.store.backend, "stores", where, "store.backend"))
    registry.decode_options(store, recipe.store.options, f"{where}: store.options")
    if not recipe.reward:
        raise UserInputError(f"{where}: reward: at least one [[reward]] table is required")
    for i, spec in enumerate(recipe.reward):
        scorer = registry.load("rewards", _named(spec.name, "rewards", where, f"reward[{i}].name"))
        registry.decode_options(scorer, spec.options, f"{where}: reward[{i}].options")
    for i, stage in enumerate(recipe.pipeline.stages):
        cls = registry.load("stages", _named(stage.name, "stages", where, f"pipeline.stages[{i}].name"))
        registry.decode_options(cls, stage.options, f"{where}: pipeline.stages[{i}].options")


def _named(name: str, group: str, where: str, field: str) -> str:
    registry.entry(group, name, where=f"{where}: {field}")
    return name


def _check_geometry(recipe: Recipe, where: str) -> None:
    s = recipe.sampling
    if (s.num_frames - 1) % 4:
        raise UserInputError(
            f"{where}: sampling.num_frames: expected 4k+1 (Wan's VAE compresses time by 4), "
            f"got {s.num_frames}; try {((s.num_frames - 1) // 4) * 4 + 1}"
        )
    lo, hi = s.sde.fraction
    if lo >= hi:
        raise UserInputError(f"{where}: sampling.sde.fraction: expected lo < hi, got [{lo}, {hi}]")
    p = recipe.pipeline
    if p.groups_per_step * s.samples_per_prompt < 1:
        raise UserInputError(f"{where}: pipeline.groups_per_step: batch would be empty")
    if p.mode == "sync" and p.max_staleness != 0:
        # sync mode trains each round on the weights that sampled it: staleness is 0 by
        # construction; a nonzero bound there is almost certainly a copy-paste slip.
        raise UserInputError(
            f"{where}: pipeline.max_staleness: sync mode is on-policy, expected 0, got {p.max_staleness}"
        )

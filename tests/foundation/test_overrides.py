"""``--set KEY=VALUE`` overrides are typed exactly like the file's values."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from foundation_helpers import BASE_RECIPE

from unirl_stream.api import UserInputError
from unirl_stream.recipe import to_toml
from unirl_stream.tomlio import parse_override, toml_value
from unirl_stream.validate import load_checked


def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every value in TOML data; array-of-table entries by index."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(node, list) and node and all(isinstance(x, dict) for x in node):
        for i, v in enumerate(node):
            yield from leaves(v, f"{prefix}.{i}")
    else:
        yield prefix, node


@pytest.mark.parametrize(
    ("item", "keys", "value"),
    [
        ("pipeline.max_staleness=2", ["pipeline", "max_staleness"], 2),
        ("algorithm.lr=3e-4", ["algorithm", "lr"], 3e-4),
        ("logging.wandb=true", ["logging", "wandb"], True),
        ("sampling.sde.fraction=[0.0, 0.5]", ["sampling", "sde", "fraction"], [0.0, 0.5]),
        ('run.name="123"', ["run", "name"], "123"),
        ("run.name=123", ["run", "name"], 123),  # typed like the file: quote strings of digits
        ("model.path=tiny:two_expert", ["model", "path"], "tiny:two_expert"),  # bare word: str
        ("model.path=/a/b=c", ["model", "path"], "/a/b=c"),
        (" data.prompts = p.txt ", ["data", "prompts"], "p.txt"),
        ("store.options={ capacity = 3 }", ["store", "options"], {"capacity": 3}),
    ],
)
def test_parse_override(item: str, keys: list[str], value: Any) -> None:
    assert parse_override(item) == (keys, value)


@pytest.mark.parametrize("item", ["pipeline", "=2", "a..b=1", ".a=1"])
def test_parse_override_rejects(item: str) -> None:
    with pytest.raises(UserInputError, match="expected KEY=VALUE"):
        parse_override(item)


def test_every_key_set_to_its_own_value_changes_nothing(base_recipe: Path) -> None:
    recipe = load_checked(base_recipe)[0]
    data = tomllib.loads(to_toml(recipe))
    items = [f"{key}={toml_value(value)}" for key, value in leaves(data)]
    assert len(items) > 60  # every default is spelled out by to_toml
    again = load_checked(base_recipe, items)[0]
    # to_toml wrote data.prompts absolute; it names the same file
    assert again.resolve(again.data.prompts) == recipe.resolve(recipe.data.prompts).resolve()
    assert msgspec.structs.replace(again, data=recipe.data) == recipe


def test_set_matches_editing_the_file(base_recipe: Path) -> None:
    edits = [("groups_per_step = 2", "groups_per_step = 3", "pipeline.groups_per_step=3"),
             ("lr = 1e-3", "lr = 0.5", "algorithm.lr=0.5"),
             ("rank = 4", "rank = 16", "model.lora.rank=16"),
             ("fraction = [0.0, 0.5]", "fraction = [0.25, 0.75]", "sampling.sde.fraction=[0.25, 0.75]"),
             ("weight = 1.0", "weight = 2.5", "reward.0.weight=2.5"),
             ("{ value = 2.0 }", "{ value = 4.0 }", "reward.0.options.value=4.0"),
             ("{ fraction = 0.5 }", "{ fraction = 0.25 }", "pipeline.stages.0.options.fraction=0.25")]
    for old, new, item in edits:
        edited = base_recipe.parent / "edited.toml"
        edited.write_text(BASE_RECIPE.replace(old, new, 1))
        from_file = load_checked(edited)[0]
        from_set = load_checked(base_recipe, [item])[0]
        assert from_set == msgspec.structs.replace(from_file, source=from_set.source), item
        assert from_set != load_checked(base_recipe)[0], item


@pytest.mark.parametrize(
    ("old", "new", "item"),
    [("max_staleness = 1", "max_staleness = -1", "pipeline.max_staleness=-1"),
     ("max_staleness = 1", 'max_staleness = "two"', "pipeline.max_staleness=two"),
     ("max_staleness = 1", "max_staleness = 1.5", "pipeline.max_staleness=1.5"),
     ("rank = 4", "rank = true", "model.lora.rank=true"),
     ("num_frames = 5", "num_frames = 0", "sampling.num_frames=0")],
)
def test_bad_set_fails_like_the_bad_file(base_recipe: Path, old: str, new: str, item: str) -> None:
    edited = base_recipe.parent / "base.toml"
    original = edited.read_text()
    edited.write_text(BASE_RECIPE.replace(old, new, 1))
    with pytest.raises(UserInputError) as from_file:
        load_checked(edited)[0]
    edited.write_text(original)
    with pytest.raises(UserInputError) as from_set:
        load_checked(base_recipe, [item])[0]
    assert str(from_set.value).removesuffix(f" (from --set {item})") == str(from_file.value)


@pytest.mark.parametrize(
    ("item", "expected"),
    [("sampling.sde.fraction=[0.1]", "sampling.sde.fraction: expected array of length 2, got [0.1]"),
     ("model.lora.experts=['high', 'mid']", "model.lora.experts[1]: expected one of 'high', 'low', got 'mid'"),
     ("reward.0={}", "reward[0].name: required key missing"),
     ("reward.0.weight=true", "reward[0].weight: expected float, got True")],
)
def test_errors_from_set_say_so(base_recipe: Path, item: str, expected: str) -> None:
    with pytest.raises(UserInputError) as err:
        load_checked(base_recipe, [item])[0]
    assert str(err.value) == f"{base_recipe}: {expected} (from --set {item})"

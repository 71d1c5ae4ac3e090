"""Property: any mutation of a valid recipe either loads (exit 0) or fails as bad input
(UserInputError / exit 2) naming the file and a dotted key; it never crashes.

Mutations: drop a key or table, set a value to a random value of any type (or to another
key's value, which is often valid), add an unknown key, replace a table by a scalar.
Mutated recipes go through the real loader (TOML text on disk -> ``load``), in-process for
speed; a few also through the CLI.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from foundation_helpers import BASE_RECIPE, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unirl_stream.api import UserInputError
from unirl_stream.recipe import Recipe, decode, to_toml
from unirl_stream.tomlio import dump
from unirl_stream.validate import load_checked

REPO = Path(__file__).resolve().parents[2]
SECTIONS = set(Recipe.__struct_fields__) - {"source"}
KEY = r"[A-Za-z0-9_\-]+|\"[^\"]*\""
DOTTED = re.compile(rf"^(?P<first>{KEY}|<top level>)(\.(?:{KEY}|<some key>)|\[\d+\])*$")

Path_ = tuple[str | int, ...]


def paths(node: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every key path (tables, values, array-of-table entries) under ``node``."""
    out: list[Path_] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        out.append((*prefix, k))
        if isinstance(v, dict) or (isinstance(v, list) and v and all(isinstance(x, dict) for x in v)):
            out.extend(paths(v, (*prefix, k)))
    return out


def _parent(raw: Any, path: Path_) -> Any:
    for k in path[:-1]:
        raw = raw[k]
    return raw


scalars = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12),
    st.sampled_from(["cpu", "auto", "sync", "async", "fp8", "bfloat16", "memory", "grpo",
                     "prompts.txt", "tiny:x", "high", "low", "flow_sde", "random_k"]),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text("abcxyz_", min_size=1, max_size=5), scalars, max_size=2),
)


WORDS = ["cpu", "auto", "cuda:1", "sync", "async", "fp8", "bfloat16", "memory", "grpo",
         "decoupled_grpo", "prompts.txt", "tiny:x", "high", "low", "flow_sde", "dance_sde",
         "random_k", "mixgrpo_window", "fraction", "synthetic", "fixture_reward", "brightness",
         "global", "drop", "advantage", "keep", "fixture_stage", "wan22"]


def _nudged(value: Any) -> st.SearchStrategy[Any]:
    if isinstance(value, bool):
        return st.booleans()
    # Earlier mutations may have made the value negative: keep the ranges non-empty.
    if isinstance(value, int):
        return st.integers(min_value=-2, max_value=max(2 * value + 10, 10))
    if isinstance(value, float):  # an earlier "set" may have made it NaN or infinite
        top = 2 * value + 1.5 if math.isfinite(value) else 1.5
        return st.floats(min_value=-0.5, max_value=max(top, 1.5))
    if isinstance(value, str):
        return st.sampled_from(WORDS)
    if isinstance(value, list) and value and not isinstance(value[0], dict):
        return st.lists(st.sampled_from(value) | _nudged(value[0]), max_size=len(value) + 1)
    return st.just(value)


@st.composite
def mutated(draw: st.DrawFn, raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    raw = msgspec.json.decode(msgspec.json.encode(raw))  # deep copy
    ops: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        all_paths = paths(raw)
        if not all_paths:
            break
        path = draw(st.sampled_from(all_paths))
        parent, key = _parent(raw, path), path[-1]
        op = draw(st.sampled_from(["drop", "set", "nudge", "nudge", "swap", "unknown", "retype"]))
        if op == "nudge":  # a plausible value of the same type: reaches the semantic checks
            parent[key] = draw(_nudged(parent[key]))
        elif op == "drop" and isinstance(parent, dict):
            del parent[key]
        elif op == "set":
            parent[key] = draw(values)
        elif op == "swap":
            other = draw(st.sampled_from(all_paths))
            parent[key] = msgspec.json.decode(msgspec.json.encode(_parent(raw, other)[other[-1]]))
        elif op == "unknown":
            target = parent[key] if isinstance(parent[key], dict) else parent
            if isinstance(target, dict):
                target[draw(st.text("abcdefghijk_", min_size=1, max_size=8))] = draw(scalars)
        elif op == "retype":
            parent[key] = draw(scalars)
        ops.append(f"{op} {'.'.join(map(str, path))}")
    return raw, ops


def _clean(value: Any) -> Any:
    """Drop what TOML cannot hold (None); the dumper writes the rest."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_clean(v) for v in value if v is not None]
    return value


def check_outcome(path: Path, raw: dict[str, Any], ops: list[str]) -> None:
    path.write_text(dump(_clean(raw)), encoding="utf-8")
    try:
        recipe = load_checked(path, check_weights=False)[0]
    except UserInputError as e:
        text = str(e)
        assert text.startswith(f"{path}: "), (ops, text)
        dotted = text[len(f"{path}: "):].split(": ", 1)[0]
        m = DOTTED.match(dotted)
        assert m, (ops, text)
        first = m.group("first")
        assert first in SECTIONS or first.strip('"') in raw or first == "<top level>", (ops, text)
        return
    # Loaded: what `validate` prints must load back to the same recipe.
    again = decode(tomllib.loads(to_toml(recipe)), "printed")
    assert msgspec.structs.replace(again, data=recipe.data, source=recipe.source) == recipe, ops


BASE_RAW = tomllib.loads(BASE_RECIPE)
FUZZ = settings(
    max_examples=150, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(case=mutated(BASE_RAW))
def test_mutated_base_recipe_never_crashes(base_recipe: Path, case: tuple) -> None:
    raw, ops = case
    check_outcome(base_recipe.parent / "mutated.toml", raw, ops)


def _real_recipes() -> list[Path]:
    return sorted((REPO / "recipes").glob("*.toml"))


def _plugins_missing(path: Path) -> str:
    """Why a repo recipe can't be validated in this build ('' if it can)."""
    try:
        load_checked(path, check_weights=False)
    except RuntimeError as e:  # a registered built-in whose module has not landed yet
        if "failed to import" in str(e) and "No module named 'unirl_stream." in str(e):
            return str(e)
        raise
    return ""


@pytest.mark.parametrize("recipe", _real_recipes(), ids=lambda p: p.name)
def test_mutated_repo_recipes_never_crash(recipe: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    if reason := _plugins_missing(recipe):
        pytest.skip(f"built-in plugin not in this build yet: {reason}")
    raw = tomllib.loads(recipe.read_text())
    folder = tmp_path_factory.mktemp("fuzz")
    # Keep relative paths working from the temporary folder.
    (folder / "prompts").symlink_to(recipe.parent / "prompts")

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(case=mutated(raw))
    def run(case: tuple) -> None:
        check_outcome(folder / recipe.name, *case)

    run()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=mutated(BASE_RAW))
def test_mutated_recipes_through_the_cli(base_recipe: Path, case: tuple) -> None:
    raw, ops = case
    path = base_recipe.parent / "cli.toml"
    path.write_text(dump(_clean(raw)), encoding="utf-8")
    result = run_cli("validate", str(path))
    assert result.code in (0, 2), (ops, result)
    assert "Traceback" not in result.text
    if result.code == 2:
        assert result.err.startswith(f"error: {path}: "), (ops, result)
    else:
        assert tomllib.loads(result.out)["run"]

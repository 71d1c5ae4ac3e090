"""Fixtures for the foundation tests: a throw-away plugin distribution and a base recipe.

Shared helpers live in ``foundation_helpers`` (a unique module name: several test folders
have a ``conftest``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from foundation_helpers import BASE_RECIPE, ENTRY_POINTS, write_dist

from unirl_stream import registry


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dist(tmp_path_factory.mktemp("dist"), "unirl-stream-test-fixtures", ENTRY_POINTS)


@pytest.fixture
def fixture_plugins(plugin_dir: Path) -> Iterator[Path]:
    """Put the fixture distribution on sys.path (and take it off again)."""
    sys.path.insert(0, str(plugin_dir))
    registry.refresh()
    try:
        yield plugin_dir
    finally:
        sys.path.remove(str(plugin_dir))
        sys.modules.pop("unirl_test_fixtures", None)
        registry.refresh()


@pytest.fixture
def base_recipe(tmp_path: Path, fixture_plugins: Path) -> Path:
    """A valid recipe (with its prompt file) in a fresh folder."""
    (tmp_path / "prompts.txt").write_text("a red ball\na blue cube\n\na green cone\n")
    path = tmp_path / "base.toml"
    path.write_text(BASE_RECIPE)
    return path

"""The plugin registry: entry points only, by name, ambiguity is an error naming both."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from foundation_helpers import run_cli, write_dist

from unirl_stream import registry
from unirl_stream.api import UserInputError


@pytest.fixture
def extra_dists(tmp_path: Path) -> Iterator[list[Path]]:
    """Extra distributions put on sys.path by the test; removed afterwards."""
    added: list[Path] = []
    yield added
    for p in added:
        sys.path.remove(str(p))
    registry.refresh()


def _add(extra: list[Path], root: Path, dist: str, entry_points: str) -> Path:
    write_dist(root, dist, entry_points)
    sys.path.insert(0, str(root))
    extra.append(root)
    registry.refresh()
    return root


def test_unknown_name_lists_the_registered_names(fixture_plugins: Path) -> None:
    with pytest.raises(UserInputError) as err:
        registry.entry("rewards", "pickscor", where="r.toml: reward[0].name")
    text = str(err.value)
    assert text.startswith("r.toml: reward[0].name: unknown reward plugin 'pickscor'; did you mean 'pickscore'?")
    for name in registry.names("rewards"):
        assert name in text
    assert "fixture_reward" in text and "video_pickscore" in text


def test_every_builtin_is_an_entry_point_of_our_distribution() -> None:
    import tomllib

    declared = tomllib.loads(Path(__file__).parents[2].joinpath("pyproject.toml").read_text())
    eps = declared["project"]["entry-points"]
    for group in registry.GROUPS:
        ours = {p.name: p for p in registry.info(group) if p.distribution == "unirl-stream"}
        assert {n: ours[n].target for n in ours} == eps[f"unirl_stream.{group}"], (
            "installed entry points differ from pyproject.toml: reinstall with `pip install -e .`"
        )


def test_two_plugins_with_one_name_is_an_error_naming_both(
    fixture_plugins: Path, tmp_path: Path, extra_dists: list[Path]
) -> None:
    _add(extra_dists, tmp_path / "dup", "acme-rewards",
         "[unirl_stream.rewards]\nfixture_reward = acme_rewards:Fixture\n")
    with pytest.raises(UserInputError) as err:
        registry.entry("rewards", "fixture_reward", where="x.toml: reward[0].name")
    text = str(err.value)
    assert "reward plugin name 'fixture_reward' is registered twice" in text
    assert "acme-rewards (acme_rewards:Fixture)" in text
    assert "unirl-stream-test-fixtures (unirl_test_fixtures:FixtureReward)" in text
    infos = [p for p in registry.info("rewards") if p.name == "fixture_reward"]
    assert sorted(p.distribution for p in infos) == ["acme-rewards", "unirl-stream-test-fixtures"]


def test_conflict_through_the_cli(
    base_recipe: Path, tmp_path: Path, extra_dists: list[Path]
) -> None:
    _add(extra_dists, tmp_path / "dup", "acme-stores",
         "[unirl_stream.stores]\nfixture_store = acme_stores:Store\n")
    result = run_cli("validate", str(base_recipe))
    assert result.code == 2
    assert f"error: {base_recipe}: store.backend: store plugin name 'fixture_store' is registered twice" in result.err
    assert "acme-stores" in result.err and "unirl-stream-test-fixtures" in result.err
    listing = run_cli("plugins")
    assert "conflict" in listing.out


def test_same_distribution_seen_twice_is_not_a_conflict(
    fixture_plugins: Path, tmp_path: Path, extra_dists: list[Path]
) -> None:
    # e.g. an editable install plus a stale copy of its metadata elsewhere on sys.path
    from foundation_helpers import ENTRY_POINTS

    _add(extra_dists, tmp_path / "copy", "unirl-stream-test-fixtures", ENTRY_POINTS)
    assert registry.entry("rewards", "fixture_reward").value == "unirl_test_fixtures:FixtureReward"


def test_broken_plugin_import_is_named(
    fixture_plugins: Path, tmp_path: Path, extra_dists: list[Path]
) -> None:
    root = _add(extra_dists, tmp_path / "broken", "broken-plugin",
                "[unirl_stream.rewards]\nbroken = broken_reward_mod:Reward\n")
    (root / "broken_reward_mod.py").write_text("import a_module_that_does_not_exist\n")
    with pytest.raises(RuntimeError, match=r"plugin rewards/broken \(broken_reward_mod:Reward\) failed to import"):
        registry.load("rewards", "broken")


def test_lookup_by_name_does_not_import(fixture_plugins: Path) -> None:
    sys.modules.pop("unirl_test_fixtures", None)
    assert registry.entry("models", "fixture_model").value == "unirl_test_fixtures:FixtureModel"
    assert "unirl_test_fixtures" not in sys.modules
    cls = registry.load("models", "fixture_model")
    assert cls.__name__ == "FixtureModel" and "unirl_test_fixtures" in sys.modules


def test_unknown_group() -> None:
    with pytest.raises(ValueError, match="unknown plugin group 'widgets'"):
        registry.names("widgets")


def test_decode_options() -> None:
    class NoOptions:
        pass

    assert registry.decode_options(NoOptions, {}, "w: x.options") is None
    with pytest.raises(UserInputError, match=r"^w: x\.options\.a: unknown key"):
        registry.decode_options(NoOptions, {"a": 1}, "w: x.options")

"""A third-party filter stage joins the pipeline through its entry point and the recipe."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from unirl_stream import registry
from unirl_stream.pipeline.driver import run

from .conftest import assert_exactly_once

PLUGIN_SRC = Path(__file__).parents[1] / "plugins" / "example_plugin"


@pytest.fixture
def example_plugin_on_path(tmp_path):
    """Make the example distribution discoverable the way an installed one is: a
    ``*.dist-info`` with ``entry_points.txt`` on sys.path (no change to our package)."""
    site = tmp_path / "site"
    info = site / "unirl_stream_example_plugin-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: unirl-stream-example-plugin\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        "[unirl_stream.stages]\nkeep_top_fraction = unirl_stream_example_plugin:KeepTopFraction\n")
    sys.path[:0] = [str(site), str(PLUGIN_SRC)]
    registry.refresh()
    yield
    sys.path.remove(str(site))
    sys.path.remove(str(PLUGIN_SRC))
    registry.refresh()


def test_filter_stage_between_reward_and_trainer(example_plugin_on_path, recipe_factory, tmp_path):
    assert registry.info("stages")[[i.name for i in registry.info("stages")].index("keep_top_fraction")].distribution \
        == "unirl-stream-example-plugin"
    recipe = recipe_factory(pipeline={
        "train_filters": ["keep"],
        "stages": [{"name": "keep_top_fraction", "workers": 1, "options": {"fraction": 0.5}}],
    })
    rows = assert_exactly_once(run(recipe, run_dir=tmp_path / "filter", live=False))
    filtered = [r for r in rows if r["reason"] == "filtered: keep=0"]
    trained = [r for r in rows if r["status"] == "trained"]
    assert len(trained) == len(filtered) == 6 * 8 // 2  # half of every group, every step
    # the filter kept each group's best half: every trained reward >= every filtered one
    by_group: dict[str, dict[str, list[float]]] = {}
    for r in trained + filtered:
        g = by_group.setdefault(r["sample_id"].split("::")[0], {"trained": [], "dropped": []})
        g[r["status"]].append(r["reward"])
    for g in by_group.values():
        assert len(g["trained"]) == len(g["dropped"]) == 2
        assert min(g["trained"]) >= max(g["dropped"])

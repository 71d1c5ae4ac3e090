"""Plugins for the foundation tests, registered by a throw-away distribution.

``conftest.plugin_dist`` writes a ``*.dist-info`` (METADATA + entry_points.txt) next to a
copy of this module in a temporary folder and puts that folder on ``sys.path``: the
registry then finds these through ``importlib.metadata`` exactly as it finds real
third-party plugins, and the validator's checks (options, weights) can be tested without
loading a real model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from unirl_stream.api import MissingWeightsError, ScoreBatch, StepResult


class FixtureModel:
    """A model plugin whose weights check behaves like a real one."""

    class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
        scale: Annotated[float, Meta(gt=0)] = 1.0

    @classmethod
    def check(cls, recipe: Any) -> None:
        path = recipe.model.path
        if path.startswith("tiny:"):
            return
        if not Path(path).expanduser().is_dir():
            raise MissingWeightsError(
                f"weights not found: {path!r} is neither a local folder nor in the cache; "
                f"get them with `huggingface-cli download {path}`"
            )


class FixtureStore:
    class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
        capacity: Annotated[int, Meta(ge=1)] = 16


class FixtureReward:
    name = "fixture_reward"

    class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
        value: float = 1.0

    def score(self, media: Any, prompts: Any) -> ScoreBatch:
        return ScoreBatch(scores=[1.0] * len(prompts))


class FixtureStage:
    class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
        fraction: Annotated[float, Meta(gt=0, le=1)] = 0.5

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def step(self) -> StepResult:
        return StepResult(done=True)


class OptionlessReward:
    """A plugin without a ``Config``: any option is an error."""

    name = "fixture_optionless"

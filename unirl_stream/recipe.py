"""The recipe schema: one TOML file decoded into typed Structs.

Each section's Struct lives beside the component it configures (``[store]`` in
``storage/config.py``, ``[pipeline]`` in ``stages/config.py``, ...); this module assembles
them, resolves paths and loads a file (``--set`` overrides applied, every decode error as
``<file>: <dotted.path>: <reason>``, a UserInputError, CLI exit code 2). Checks that need
more than types run once, in ``validate.py``; messages are worded in ``explain.py``, TOML
is written in ``tomlio.py``.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from unirl_stream.algorithms.config import AlgorithmConfig, SamplingConfig
from unirl_stream.api import UserInputError
from unirl_stream.explain import explain, toml_error
from unirl_stream.models.config import ModelConfig
from unirl_stream.rewards.config import RewardSpec
from unirl_stream.stages.config import PipelineConfig
from unirl_stream.storage.config import StoreConfig
from unirl_stream.tomlio import apply_overrides, dump


class RunConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    seed: Annotated[int, Meta(ge=0)] = 0
    output_dir: str = "runs"
    """Run directories are created as ``<output_dir>/<name>-<time>`` (relative to cwd)."""
    total_steps: Annotated[int, Meta(ge=1)]
    """Optimizer steps to train for."""
    checkpoint_every: Annotated[int, Meta(ge=0)] = 0
    """Trainer checkpoint period in optimizer steps (0: only at the end)."""


class DataConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    prompts: str
    """Prompt file, relative to the recipe's folder: .txt (one prompt a line) or
    .jsonl/.json (objects with a ``prompt`` field). Prompt id = ``{stem}:{index}``."""
    shuffle: bool = True
    """Visit prompts in a seeded random order (reshuffled each epoch)."""


class LoggingConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    live: bool = True
    """Live terminal panel when stdout is a terminal (``--no-live`` turns it off)."""
    log_every_s: Annotated[float, Meta(gt=0)] = 10.0
    """Plain log line period when the panel is off."""
    wandb: bool = False
    wandb_project: str = "unirl-stream"
    media_every: Annotated[int, Meta(ge=0)] = 10
    """Every N policy versions (0: never), write the best, median and worst sample of each
    scored group under ``RUN_DIR/media/v{version}/`` (PNG; videos also as animated WebP),
    indexed in ``media/index.jsonl``; the tracking sinks log them too."""
    media_max_mb: Annotated[float, Meta(gt=0)] = 500.0
    """Disk bound of ``RUN_DIR/media``: older versions are thinned to stay under it."""
    tensorboard: bool = False
    """Write TensorBoard event files under ``RUN_DIR/tensorboard`` (scalars, histograms
    of staleness and rewards, the media)."""
    prometheus_port: Annotated[int, Meta(ge=0, le=65535)] | None = None
    """Serve ``/metrics`` on this port (0: a free port); None: no endpoint."""
    bind_host: str = "127.0.0.1"
    """Address our metrics and Prometheus sockets bind to."""


class Recipe(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    run: RunConfig
    model: ModelConfig
    data: DataConfig
    sampling: SamplingConfig = msgspec.field(default_factory=SamplingConfig)
    algorithm: AlgorithmConfig = msgspec.field(default_factory=AlgorithmConfig)
    reward: list[RewardSpec] = []
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    pipeline: PipelineConfig = msgspec.field(default_factory=PipelineConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    source: str = ""
    """Absolute path of the recipe file (set by the loader; not written by users)."""

    def resolve(self, rel: str) -> Path:
        """A path from the recipe, relative to the recipe's folder."""
        p = Path(rel).expanduser()
        return p if p.is_absolute() or not self.source else Path(self.source).parent / p


def decode(raw: dict[str, Any], where: str, overrides: list[str] | None = None) -> Recipe:
    try:
        return msgspec.convert(raw, Recipe)
    except msgspec.ValidationError as e:
        text = explain(e, raw, Recipe)
        field = text.partition(":")[0]
        for item in overrides or []:
            # reward.0.weight (a --set key) is reward[0].weight in messages
            key = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", item.partition("=")[0].strip())
            if field == key or field.startswith((key + ".", key + "[")) or key.startswith(
                (field + ".", field + "[")
            ):
                text += f" (from --set {item})"
        raise UserInputError(f"{where}: {text}") from None


def load(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and decode: types and ranges only. What needs more than types
    (plugins, files, weights, model geometry) is ``validate.load_checked``."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: recipe file not found")
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserInputError(toml_error(str(path), text, e)) from None
    except UnicodeDecodeError as e:
        raise UserInputError(f"{path}: <top level>: not UTF-8 text: {e}") from None
    try:
        apply_overrides(raw, overrides or [])
    except UserInputError as e:
        raise UserInputError(f"{path}: {e}") from None
    if "source" in raw:
        raise UserInputError(f"{path}: source: unknown key (set by the loader, not by recipes)")
    recipe = decode(raw, str(path), overrides)
    return msgspec.structs.replace(recipe, source=str(path.resolve()))


def to_toml(recipe: Recipe) -> str:
    """The resolved recipe as TOML (what ``validate`` prints and run dirs keep).

    Every default is written out, and ``data.prompts`` becomes absolute, so the text
    loads to the same recipe from any folder."""
    data = msgspec.to_builtins(recipe)
    data.pop("source", None)
    if recipe.source:
        data["data"]["prompts"] = str(recipe.resolve(recipe.data.prompts).resolve())
    return dump(data).lstrip("\n")

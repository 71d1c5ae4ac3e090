"""A recipe is one TOML file decoded into typed Structs, checked before anything starts.

Each section's Struct lives beside the component it configures (``[store]`` in
``storage/config.py``, ``[pipeline]`` in ``pipeline/config.py``, ...); this module only
assembles them, resolves paths, applies ``--set`` overrides and turns every decode error
into ``<file>: <dotted.path>: <reason>`` (a UserInputError, CLI exit code 2).
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
from unirl_stream.models.config import ModelConfig
from unirl_stream.pipeline.config import PipelineConfig
from unirl_stream.rewards.config import RewardSpec
from unirl_stream.storage.config import StoreConfig


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
    media_every: Annotated[int, Meta(ge=0)] = 0
    """Log sample thumbnails to wandb every N trainer steps (0: never)."""
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


# ---------------------------------------------------------------------------- errors
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _dotted(path: str) -> str:
    return path.lstrip(".").replace(".[", "[") or "<top level>"


def _lookup(raw: Any, path: str) -> Any:
    for part in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]", path):
        key, idx = part
        try:
            raw = raw[key] if key else raw[int(idx)]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return raw


_MISSING = object()


def explain(err: msgspec.ValidationError, raw: Any) -> str:
    """``Expected `int` >= 0 - at `$.pipeline.x``` -> ``pipeline.x: expected int >= 0, got -1``."""
    m = _AT.match(str(err))
    assert m is not None
    msg, path = m.group("msg"), m.group("path") or ""
    if unknown := re.match(r"Object contains unknown field `(.+)`", msg):
        return f"{_dotted(path + '.' + unknown.group(1))}: unknown key (check spelling; see docs/recipes.md)"
    if missing := re.match(r"Object missing required field `(.+)`", msg):
        return f"{_dotted(path + '.' + missing.group(1))}: required key missing"
    msg = msg.replace("`", "")
    msg = msg[:1].lower() + msg[1:]
    value = _lookup(raw, path)
    if value is not _MISSING and "got" not in msg:
        msg += f", got {value!r}"
    return f"{_dotted(path)}: {msg}"


# ---------------------------------------------------------------------------- loading
def parse_override(item: str) -> tuple[list[str], Any]:
    """``pipeline.max_staleness=2`` -> (["pipeline", "max_staleness"], 2); the value is
    parsed as a TOML value (so types are checked like the file's), else kept as a string."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise UserInputError(f"--set {item!r}: expected KEY=VALUE, e.g. pipeline.max_staleness=2")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> None:
    for item in overrides:
        keys, value = parse_override(item)
        node: Any = raw
        for k in keys[:-1]:
            if isinstance(node, list) and k.isdigit() and int(k) < len(node):
                node = node[int(k)]
                continue
            if not isinstance(node, dict):
                raise UserInputError(f"--set {item}: {k!r} is not a table")
            node = node.setdefault(k, {})
        if isinstance(node, list) and keys[-1].isdigit() and int(keys[-1]) < len(node):
            node[int(keys[-1])] = value
        elif isinstance(node, dict):
            node[keys[-1]] = value
        else:
            raise UserInputError(f"--set {item}: {'.'.join(keys[:-1])} is not a table")


def decode(raw: dict[str, Any], where: str) -> Recipe:
    try:
        return msgspec.convert(raw, Recipe)
    except msgspec.ValidationError as e:
        raise UserInputError(f"{where}: {explain(e, raw)}") from None


def load(path: str | Path, overrides: list[str] | None = None, check: bool = True) -> Recipe:
    """Read, override, decode and (``check``) validate plugins, files and weights."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: recipe file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserInputError(f"{path}: malformed TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise UserInputError(f"{path}: not UTF-8 text: {e}") from None
    if "source" in raw:
        raise UserInputError(f"{path}: source: unknown key (set by the loader)")
    apply_overrides(raw, overrides or [])
    recipe = decode(raw, str(path))
    recipe = msgspec.structs.replace(recipe, source=str(path.resolve()))
    if check:
        from unirl_stream.validate import check_recipe

        check_recipe(recipe, str(path))
    return recipe


def to_toml(recipe: Recipe) -> str:
    """The resolved recipe as TOML (what ``validate`` prints and run dirs keep)."""
    data = msgspec.to_builtins(recipe)
    data.pop("source", None)
    return _dump_toml(data)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return msgspec.json.encode(v).decode()
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else msgspec.json.encode(k).decode()


def _dump_toml(data: dict[str, Any], prefix: str = "") -> str:
    scalars, tables, arrays = [], [], []
    for k, v in data.items():
        if v is None:
            continue  # TOML has no null: absent means default (None)
        if isinstance(v, dict) and v and _is_section(k):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v) and prefix == "":
            arrays.append((k, v))
        else:
            scalars.append(f"{_key(k)} = {_toml_value(v)}")
    out = "\n".join(scalars) + ("\n" if scalars else "")
    for k, v in tables:
        name = f"{prefix}{_key(k)}"
        out += f"\n[{name}]\n" + _dump_toml(v, name + ".")
    for k, items in arrays:
        for item in items:
            out += f"\n[[{prefix}{_key(k)}]]\n" + _dump_toml(item, f"{prefix}{k}.")
    return out


def _is_section(key: str) -> bool:
    # Free-form option tables stay inline so they read as one value.
    return key not in ("options", "resources")

"""A recipe is one TOML file decoded into typed Structs, checked before anything starts.

Each section's Struct lives beside the component it configures (``[store]`` in
``storage/config.py``, ``[pipeline]`` in ``pipeline/config.py``, ...); this module only
assembles them, resolves paths, applies ``--set`` overrides and turns every decode error
into ``<file>: <dotted.path>: <reason>`` (a UserInputError, CLI exit code 2).
"""

from __future__ import annotations

import copy
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


# ---------------------------------------------------------------------------- errors
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_GOT_TYPE = re.compile(r", got \S+$")  # msgspec's "got str" / "got 1": we show the value
_MISSING = object()


def _dotted(path: str) -> str:
    return path.lstrip(".").replace(".[", "[") or "<top level>"


def _lookup(raw: Any, path: str) -> Any:
    for key, idx in re.findall(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]", path):
        try:
            raw = raw[key] if key else raw[int(idx)]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return raw


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _dict_key(raw: Any, path: str, target: type) -> str:
    """msgspec reports a bad dict value as ``$.a.b[...]`` without the key. Find the key by
    decoding again with only one entry of that dict at a time (dicts here are small)."""
    prefix = path[: -len("[...]")]
    table = _lookup(raw, prefix)
    if not isinstance(table, dict) or "[...]" in prefix:
        return _dotted(prefix) + ".<some key>"
    for key in list(table):
        trial = copy.deepcopy(raw)
        node = _lookup(trial, prefix)
        node.clear()
        node[key] = table[key]
        try:
            msgspec.convert(trial, target)
        except msgspec.ValidationError as e:
            m = _AT.match(str(e))
            if m is not None and m.group("path") == path:
                return _dotted(prefix) + "." + _key(str(key))
    return _dotted(prefix) + ".<some key>"


def _literal_values(target: type, path: str) -> tuple[Any, ...]:
    """The allowed values of the Literal field at ``path`` (empty if it is not one)."""
    from msgspec import inspect as mi

    t: Any = mi.type_info(target)
    for key, idx in re.findall(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]", path):
        if isinstance(t, mi.UnionType):
            t = next((x for x in t.types if not isinstance(x, mi.NoneType)), t)
        if key and isinstance(t, mi.StructType):
            t = next((f.type for f in t.fields if f.encode_name == key), None)
        elif idx and isinstance(t, mi.ListType | mi.TupleType):
            t = t.item_type if isinstance(t, mi.ListType) else t.item_types[int(idx)]
        else:
            return ()
    if isinstance(t, mi.ListType):  # a bad entry of a list of literals: path ends at the list
        t = t.item_type
    return tuple(t.values) if isinstance(t, mi.LiteralType) else ()


def explain(err: msgspec.ValidationError, raw: Any, target: type | None = None) -> str:
    """``Expected `int` >= 0 - at `$.pipeline.x``` -> ``pipeline.x: expected int >= 0, got -1``.

    ``target`` (the type ``raw`` was decoded into) lets a bad value inside a free-form
    table be reported under its key instead of msgspec's ``[...]``."""
    m = _AT.match(str(err))
    assert m is not None  # the pattern matches any string
    msg, path = m.group("msg"), m.group("path") or ""
    if unknown := re.match(r"Object contains unknown field `(.+)`", msg):
        return (
            f"{_dotted(path + '.' + _key(unknown.group(1)))}: unknown key "
            "(check spelling; docs/recipes.md lists every key)"
        )
    if missing := re.match(r"Object missing required field `(.+)`", msg):
        return f"{_dotted(path + '.' + missing.group(1))}: required key missing"
    msg = msg.replace("`", "")
    msg = msg[:1].lower() + msg[1:]
    if msg.startswith("invalid enum value") and target is not None:
        allowed = _literal_values(target, path)
        msg = "expected one of " + ", ".join(map(repr, allowed)) if allowed else msg
    if path.endswith("[...]"):
        where = _dict_key(raw, path, target) if target is not None else _dotted(path)
        return f"{where}: {msg}"
    value = _lookup(raw, path)
    if value is not _MISSING:
        msg = _GOT_TYPE.sub("", msg) + f", got {_short(value)}"
    return f"{_dotted(path)}: {msg}"


def _toml_error(where: str, text: str, err: tomllib.TOMLDecodeError) -> str:
    """``<file>: <dotted key>: malformed TOML: <reason> (line L, column C)``."""
    msg = str(err)
    at = re.search(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$", msg)
    reason = msg[: at.start()] if at else msg
    line = int(at.group(1)) if at and at.group(1) else None
    key = ""
    if declared := re.search(r"\((('[^']*',?\s*)+)\)", reason):
        key = ".".join(re.findall(r"'([^']*)'", declared.group(1)))
        reason = reason.replace(declared.group(0), repr(key)).replace("declare", "declare table")
    elif line is not None:
        key = _key_at(text.splitlines(), line)
    loc = f" (line {line}, column {at.group(2)})" if line is not None and at else " (at end of file)"
    return f"{where}: {key or '<top level>'}: malformed TOML: {reason}{loc}"


def _key_at(lines: list[str], line: int) -> str:
    """The dotted key a TOML line belongs to: the table header above it plus its own key."""
    own = re.match(r"\s*([A-Za-z0-9_.-]+)\s*=", lines[line - 1]) if line <= len(lines) else None
    header = re.match(r"\s*\[\[?\s*([A-Za-z0-9_.-]+)", lines[line - 1]) if line <= len(lines) else None
    if header:
        return header.group(1)
    table = ""
    for text in reversed(lines[: line - 1]):
        if h := re.match(r"\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]", text):
            table = h.group(1)
            break
    return ".".join(x for x in (table, own.group(1) if own else "") if x)


# ---------------------------------------------------------------------------- loading
def parse_override(item: str) -> tuple[list[str], Any]:
    """``pipeline.max_staleness=2`` -> (["pipeline", "max_staleness"], 2); the value is
    parsed as a TOML value (so types are checked like the file's), else kept as a string."""
    key, sep, value = item.partition("=")
    keys = [k.strip() for k in key.split(".")]
    if not sep or not all(keys):
        raise UserInputError(
            f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. pipeline.max_staleness=2"
        )
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()  # bare words are strings: --set model.path=/data/wan
    return keys, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> None:
    """Set each ``KEY=VALUE`` in the raw TOML data; list entries by index (reward.0.weight)."""
    for item in overrides:
        keys, value = parse_override(item)
        node: Any = raw
        for depth, k in enumerate(keys):
            last = depth == len(keys) - 1
            if isinstance(node, list):
                if not k.isdigit() or int(k) >= len(node):
                    raise UserInputError(
                        f"{'.'.join(keys[:depth])}: has {len(node)} entries, expected an index "
                        f"0..{len(node) - 1}, got {k!r} (from --set {item})"
                    )
                k = int(k)  # type: ignore[assignment]
            elif not isinstance(node, dict):
                raise UserInputError(
                    f"{'.'.join(keys[:depth])}: is not a table (from --set {item})"
                )
            if last:
                node[k] = value
            else:
                node = node.setdefault(k, {}) if isinstance(node, dict) else node[k]


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


def load(
    path: str | Path,
    overrides: list[str] | None = None,
    check: bool = True,
    check_weights: bool = True,
) -> Recipe:
    """Read, override, decode and (``check``) validate plugins, files and weights.

    ``check_weights=False`` skips only the model plugin's weights check (``validate`` on a
    machine without the checkpoint); everything else is still checked."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: recipe file not found")
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserInputError(_toml_error(str(path), text, e)) from None
    except UnicodeDecodeError as e:
        raise UserInputError(f"{path}: <top level>: not UTF-8 text: {e}") from None
    try:
        apply_overrides(raw, overrides or [])
    except UserInputError as e:
        raise UserInputError(f"{path}: {e}") from None
    if "source" in raw:
        raise UserInputError(f"{path}: source: unknown key (set by the loader, not by recipes)")
    recipe = decode(raw, str(path), overrides)
    recipe = msgspec.structs.replace(recipe, source=str(path.resolve()))
    if check:
        from unirl_stream.validate import check_recipe

        check_recipe(recipe, str(path), check_weights=check_weights)
    return recipe


def to_toml(recipe: Recipe) -> str:
    """The resolved recipe as TOML (what ``validate`` prints and run dirs keep).

    Every default is written out, and ``data.prompts`` becomes absolute, so the text
    loads to the same recipe from any folder."""
    data = msgspec.to_builtins(recipe)
    data.pop("source", None)
    if recipe.source:
        data["data"]["prompts"] = str(recipe.resolve(recipe.data.prompts).resolve())
    return _dump_toml(data).lstrip("\n")


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
        if not v:
            return "{}"
        items = [f"{_key(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else msgspec.json.encode(k).decode()


def _dump_toml(data: dict[str, Any], prefix: str = "") -> str:
    scalars, blocks = [], []
    for k, v in data.items():
        if v is None:
            continue  # TOML has no null: absent means default (None)
        name = f"{prefix}{_key(k)}"
        if isinstance(v, dict) and v and _is_section(k):
            blocks.append(f"\n[{name}]\n" + _dump_toml(v, name + "."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v) and _is_section(k):
            blocks += [f"\n[[{name}]]\n" + _dump_toml(item, name + ".") for item in v]
        else:
            scalars.append(f"{_key(k)} = {_toml_value(v)}")
    # TOML: a table's own keys come before its sub-tables; those keep the field order.
    return "\n".join(scalars) + ("\n" if scalars else "") + "".join(blocks)


def _is_section(key: str) -> bool:
    # Free-form option tables stay inline so they read as one value.
    return key not in ("options", "resources")

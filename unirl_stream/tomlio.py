"""TOML in and out for recipes: ``--set KEY=VALUE`` overrides on the raw data, and the writer
that turns a resolved recipe back into a file (run directories keep one; ``validate`` prints it).
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

import msgspec

from unirl_stream.api import UserInputError


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


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return msgspec.json.encode(v).decode()
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        if not v:
            return "{}"
        items = [f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items() if x is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else msgspec.json.encode(k).decode()


def dump(data: dict[str, Any], prefix: str = "") -> str:
    scalars, blocks = [], []
    for k, v in data.items():
        if v is None:
            continue  # TOML has no null: absent means default (None)
        name = f"{prefix}{toml_key(k)}"
        if isinstance(v, dict) and v and _is_section(k):
            blocks.append(f"\n[{name}]\n" + dump(v, name + "."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v) and _is_section(k):
            blocks += [f"\n[[{name}]]\n" + dump(item, name + ".") for item in v]
        else:
            scalars.append(f"{toml_key(k)} = {toml_value(v)}")
    # TOML: a table's own keys come before its sub-tables; those keep the field order.
    return "\n".join(scalars) + ("\n" if scalars else "") + "".join(blocks)


def _is_section(key: str) -> bool:
    # Free-form option tables stay inline so they read as one value.
    return key not in ("options", "resources")

"""Readable messages for bad recipe input: msgspec validation errors and TOML syntax errors.

Every message is ``<dotted.path>: <reason>``, with the offending value shown (msgspec says
only its type), the allowed values of a Literal, and a bad entry of a free-form table named
by its key. The recipe loader and the plugin registry (options tables) both use it.
"""

from __future__ import annotations

import copy
import re
import tomllib
from typing import Any

import msgspec

from unirl_stream.tomlio import toml_key as _key

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


def toml_error(where: str, text: str, err: tomllib.TOMLDecodeError) -> str:
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

"""Plugins by name, from ``importlib.metadata`` entry points (the only mechanism).

Groups: ``unirl_stream.{stages,rewards,models,algorithms,stores}``. Our built-ins register
in our own pyproject exactly like third-party distributions do. A recipe names plugins by
name; ``load(group, name)`` imports the object only when it is needed.

Convention for plugin modules: import heavy libraries (torch, diffusers, ray) inside
functions, or at module level only if the plugin is useless without them; ``Config``
(a msgspec Struct class attribute, optional) decodes the plugin's ``options`` table.
"""

from __future__ import annotations

import difflib
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import msgspec

from unirl_stream.api import UserInputError

GROUPS = ("stages", "rewards", "models", "algorithms", "stores")
_PREFIX = "unirl_stream."


class PluginInfo(msgspec.Struct, frozen=True):
    group: str
    name: str
    target: str  # "module:attr"
    distribution: str


def _dist_name(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "<unknown>"


@cache
def _scan(group: str) -> dict[str, tuple[EntryPoint, ...]]:
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=_PREFIX + group):
        found.setdefault(ep.name, [])
        # The same distribution can be seen twice (e.g. an editable install plus a
        # leftover egg-info on sys.path); only distinct targets or dists conflict.
        if not any(x.value == ep.value and _dist_name(x) == _dist_name(ep) for x in found[ep.name]):
            found[ep.name].append(ep)
    return {k: tuple(v) for k, v in found.items()}


def refresh() -> None:
    """Forget cached entry points (after installing a plugin at run time, in tests)."""
    _scan.cache_clear()
    load.cache_clear()


def _check_group(group: str) -> None:
    if group not in GROUPS:
        raise ValueError(f"unknown plugin group {group!r}; groups: {', '.join(GROUPS)}")


def names(group: str) -> list[str]:
    _check_group(group)
    return sorted(_scan(group))


def info(group: str) -> list[PluginInfo]:
    _check_group(group)
    return [
        PluginInfo(group, name, ep.value, _dist_name(ep))
        for name, eps in sorted(_scan(group).items())
        for ep in eps
    ]


def entry(group: str, name: str, where: str = "") -> EntryPoint:
    """The single entry point for ``name``; UserInputError if unknown or ambiguous."""
    _check_group(group)
    eps = _scan(group).get(name)
    prefix = f"{where}: " if where else ""
    if not eps:
        known = ", ".join(names(group)) or "none"
        close = difflib.get_close_matches(name, names(group), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserInputError(
            f"{prefix}unknown {group[:-1]} plugin {name!r}; {hint}registered: {known} "
            f"(see `unirl-stream plugins`)"
        )
    if len(eps) > 1:
        dists = " and ".join(f"{_dist_name(ep)} ({ep.value})" for ep in eps)
        raise UserInputError(
            f"{prefix}{group[:-1]} plugin name {name!r} is registered twice: by {dists}; "
            f"uninstall one of them"
        )
    return eps[0]


@cache
def load(group: str, name: str) -> Any:
    """Import and return the plugin object (usually a class)."""
    ep = entry(group, name)
    try:
        return ep.load()
    except Exception as e:  # a broken plugin is a runtime failure, named
        raise RuntimeError(f"plugin {group}/{name} ({ep.value}) failed to import: {e}") from e


def decode_options(plugin: Any, options: dict[str, Any], where: str) -> Any:
    """Decode an ``options`` table with the plugin's ``Config`` Struct (if it has one)."""
    config_type = getattr(plugin, "Config", None)
    if config_type is None:
        if options:
            raise UserInputError(
                f"{where}.{sorted(options)[0]}: unknown key (this plugin takes no options)"
            )
        return None
    try:
        return msgspec.convert(options, config_type)
    except msgspec.ValidationError as e:
        from unirl_stream.explain import explain

        text = explain(e, options, config_type)
        # A check of the whole table (the Struct's __post_init__) has no key: name the table.
        text = text.removeprefix("<top level>")
        raise UserInputError(f"{where}{text if text.startswith(':') else '.' + text}") from None

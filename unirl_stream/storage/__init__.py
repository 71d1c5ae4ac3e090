"""Sample stores: one contract (api.SampleStore), several backends (plugins).

``open_store(cfg, use_ray=...)`` looks the backend up by name in the ``unirl_stream.stores``
entry-point group, decodes ``[store] options`` with its ``Config`` and launches it: the
returned object is a picklable handle whose ``shutdown()`` stops what the launch started.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from unirl_stream.api import SampleStore
    from unirl_stream.storage.config import StoreConfig


def open_store(cfg: StoreConfig, *, use_ray: bool) -> SampleStore:
    """Launch the configured backend (servers included) and return a store handle."""
    from unirl_stream import registry

    plugin = registry.load("stores", cfg.backend)
    options = registry.decode_options(plugin, dict(cfg.options), "[store] options")
    return plugin.launch(cfg, options, use_ray=use_ray)


__all__ = ["open_store"]

"""Sample stores: one contract (api.SampleStore), several backends (plugins).

``open_store(cfg, use_ray=...)`` looks the backend up by name in the ``unirl_stream.stores``
entry-point group, decodes ``[store] options`` with its ``Config`` and launches it: the
returned object is a picklable handle whose ``shutdown()`` stops what the launch started.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from unirl_stream.api import SampleStore
    from unirl_stream.storage.config import StoreConfig


# Mooncake reads these when its library loads, which can happen early (TransferQueue imports
# it), so they are set when this package is imported; an explicit environment value wins.
MOONCAKE_ENV = {
    # Fail fast on an unreachable master (the library otherwise retries for ~90 s).
    "MC_STORE_CLIENT_SETUP_RETRIES": "1",
    # A master RPC that hangs (e.g. a peer that accepts TCP but is no mooncake_master)
    # fails after 10 s instead of 30 s. Payload transfers are not RPCs.
    "MC_RPC_TIMEOUT_MS": "10000",
    # Keep Mooncake's INFO lines (a dozen per client) out of our logs (GLOG_minloglevel
    # has no effect on this build; MC_LOG_LEVEL does).
    "MC_LOG_LEVEL": "WARNING",
}
for _key, _value in MOONCAKE_ENV.items():
    os.environ.setdefault(_key, _value)


def open_store(cfg: StoreConfig, *, use_ray: bool) -> SampleStore:
    """Launch the configured backend (servers included) and return a store handle."""
    from unirl_stream import registry

    plugin = registry.load("stores", cfg.backend)
    options = registry.decode_options(plugin, dict(cfg.options), "[store] options")
    return plugin.launch(cfg, options, use_ray=use_ray)


__all__ = ["open_store"]

"""Backend launch paths: the registry, options, servers started and stopped, bad addresses."""

from __future__ import annotations

import pickle
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from unirl_stream import registry
from unirl_stream.api import SampleMeta, StoreError, UserInputError
from unirl_stream.storage import open_store
from unirl_stream.storage.config import StoreConfig
from unirl_stream.storage.memory import MemoryStore
from unirl_stream.storage.mooncake import MooncakeStore
from unirl_stream.storage.transferqueue import TransferQueueStore


def test_backends_are_registered_entry_points() -> None:
    assert registry.load("stores", "memory") is MemoryStore
    assert registry.load("stores", "transferqueue") is TransferQueueStore
    assert registry.load("stores", "mooncake") is MooncakeStore
    with pytest.raises(UserInputError, match="nosuch"):
        open_store(StoreConfig(backend="nosuch"), use_ray=False)
    with pytest.raises(UserInputError, match="payload_owner"):
        open_store(StoreConfig(options={"payload_owner": "nobody"}), use_ray=False)
    with pytest.raises(UserInputError, match="segment_gb"):
        open_store(StoreConfig(backend="mooncake", options={"segment_gb": 1}), use_ray=False)


def test_in_process_store_refuses_to_be_pickled() -> None:
    store = open_store(StoreConfig(), use_ray=False)
    with pytest.raises(StoreError, match="use_ray=True"):
        pickle.dumps(store)
    store.shutdown()


def test_transferqueue_needs_ray() -> None:
    with pytest.raises(StoreError, match="use_ray=True"):
        open_store(StoreConfig(backend="transferqueue"), use_ray=False)


def _port_is_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def test_mooncake_in_process_starts_and_stops_its_own_master() -> None:
    store = open_store(StoreConfig(backend="mooncake", budget_mb=8), use_ray=False)
    address = store._plane.settings.master
    assert address.startswith("127.0.0.1:") and _port_is_open(address)
    x = torch.randn(3, 4, 5).to(torch.bfloat16)
    store.put(["m:0", "m:1", "m:2"], {"x": x}, [SampleMeta("m", 3)] * 3)
    assert torch.equal(store.get(["m:2", "m:0"], ["x"])["x"], x[[2, 0]])
    store.shutdown()
    assert not _port_is_open(address)  # SIGTERM'd by shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_peer() -> Iterator[str]:
    """Accepts TCP connections and never says a word (not a mooncake_master)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[Any] = []

    def accept() -> None:
        while True:
            try:
                held.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"127.0.0.1:{srv.getsockname()[1]}"
    srv.close()
    for conn in held:
        conn.close()


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_unreachable_master_fails_fast_naming_the_address(
    kind: str, request: pytest.FixtureRequest, mooncake_master: str
) -> None:
    address = f"127.0.0.1:{_free_port()}" if kind == "refused" else request.getfixturevalue("silent_peer")
    cfg = StoreConfig(backend="mooncake", options={"master_address": address})
    t0 = time.monotonic()
    with pytest.raises(StoreError) as info:
        open_store(cfg, use_ray=False)
    assert time.monotonic() - t0 < 30
    assert address in str(info.value)
    # The process is still usable: a store on a live master works afterwards.
    live = StoreConfig(backend="mooncake", budget_mb=4, options={"master_address": mooncake_master})
    store = open_store(live, use_ray=False)
    store.put(["after"], {"x": torch.ones(1, 2)}, [SampleMeta("a", 1)])
    assert store.get(["after"], ["x"])["x"].sum() == 2
    store.shutdown()


def test_master_dies_with_the_process_that_started_it() -> None:
    """A crashed driver leaves no mooncake_master behind (PR_SET_PDEATHSIG)."""
    import subprocess
    import sys

    code = (
        "import os\n"
        "from unirl_stream.storage.mooncake_client import MasterProcess\n"
        "m = MasterProcess.start()\n"
        "print(m.address, flush=True)\n"
        "os._exit(0)  # no shutdown(): a crash\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    address = out.stdout.strip().splitlines()[-1]
    assert address.startswith("127.0.0.1:")
    deadline = time.monotonic() + 10
    while _port_is_open(address):
        assert time.monotonic() < deadline, f"master at {address} outlived its parent"
        time.sleep(0.1)

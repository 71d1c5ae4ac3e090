"""Real servers for the store tests, shared per session (they are slow to start).

* Ray: ``ray.init(num_cpus=2, include_dashboard=False)`` once (TransferQueue's controller and
  its one storage unit take both CPUs; every other actor here asks for num_cpus=0).
* TransferQueue: started once by an anchor store; each test's store gets its own partition.
* Mooncake: one ``mooncake_master`` on 127.0.0.1 (free port); each test's store mounts its
  own segment (through its index actor) and uses its own key prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import storage_actors
from storage_actors import BACKENDS

from unirl_stream.storage import open_store
from unirl_stream.storage.config import StoreConfig


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    # Workers cannot import this test directory: ship the helper module by value.
    ray.cloudpickle.register_pickle_by_value(storage_actors)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def tq_anchor(ray_cluster: Any) -> Iterator[Any]:
    """Starts TransferQueue for the session; stops it at the end."""
    store = open_store(StoreConfig(backend="transferqueue", budget_mb=1), use_ray=True)
    yield store
    store.shutdown()


@pytest.fixture(scope="session")
def mooncake_master() -> Iterator[str]:
    from unirl_stream.storage.mooncake_client import MasterProcess, close_shared

    master = MasterProcess.start()
    yield master.address
    close_shared(master.address)
    master.stop()


@pytest.fixture(scope="session")
def workers(ray_cluster: Any) -> list[Any]:
    """Four long-lived actors (num_cpus=0), reused by every Ray backend's tests."""
    actor = ray_cluster.remote(num_cpus=0)(storage_actors.Worker)
    pool = [actor.remote() for _ in range(4)]
    ray_cluster.get([w.ping.remote() for w in pool])
    return pool


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_store(request: pytest.FixtureRequest, backend: str) -> Iterator[Callable[..., Any]]:
    """``make_store(budget_mb=..., lease_s=..., put_timeout_s=..., **options)``."""
    created: list[Any] = []
    use_ray = backend != "memory-local"
    options: dict[str, Any] = {}
    name = backend.removesuffix("-local").removesuffix("-ray")
    if backend == "transferqueue":
        request.getfixturevalue("tq_anchor")
    if backend == "mooncake":
        options["master_address"] = request.getfixturevalue("mooncake_master")
    if use_ray:
        request.getfixturevalue("ray_cluster")

    def make(budget_mb: float = 64, lease_s: float = 60, put_timeout_s: float = 30, **opts: Any) -> Any:
        cfg = StoreConfig(
            backend=name, budget_mb=budget_mb, lease_s=lease_s, put_timeout_s=put_timeout_s,
            options={**options, **opts},
        )
        store = open_store(cfg, use_ray=use_ray)
        created.append(store)
        return store

    yield make
    for store in created:
        store.shutdown()

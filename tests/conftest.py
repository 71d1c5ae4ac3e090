"""Fixtures shared by several test folders (each folder's conftest opts in)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
# Tests that start Ray clusters, servers or whole CLI runs, or measure wall-clock behaviour get
# the ``serial`` marker: scripts/test.sh runs the others first on two pytest-xdist workers
# (single-threaded in-process tests: two at a time double the throughput of 2 cores), then
# these alone, one at a time (multi-process runs already fill the cores, and sharing them
# slowed the Ray runs by 1.5-2.4x: measured on this machine).
SERIAL_FOLDERS = ("pipeline", "monitor", "storage")
SERIAL_FILES = ("test_reward_pool.py",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        folder = path.relative_to(TESTS).parts[0] if path.is_relative_to(TESTS) else ""
        if (folder in SERIAL_FOLDERS or path.name in SERIAL_FILES
                or item.get_closest_marker("ray") or item.get_closest_marker("slow")):
            item.add_marker(pytest.mark.serial)


@pytest.fixture(scope="session")
def tiny_model_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tiny models built once per session into a private cache folder (never the user's),
    and torch single-threaded: on the shared 2-core machine two spinning OpenMP threads per
    process made the tiny-model tests ~4x slower, not faster."""
    import torch

    old_env = os.environ.get("UNIRL_STREAM_CACHE")
    old_threads = torch.get_num_threads()
    os.environ["UNIRL_STREAM_CACHE"] = str(tmp_path_factory.mktemp("unirl_cache"))
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old_threads)
    if old_env is None:
        os.environ.pop("UNIRL_STREAM_CACHE", None)
    else:
        os.environ["UNIRL_STREAM_CACHE"] = old_env

"""Fixtures shared by several test folders (each folder's conftest opts in)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


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

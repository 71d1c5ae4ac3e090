"""Fixtures for the diffusion core tests (tiny Wan2.2 models on CPU)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _tiny_models(tiny_model_env: None) -> None:
    """Every test here runs in tests/conftest.py's tiny-model environment."""

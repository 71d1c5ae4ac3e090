"""recipes/quickstart_image.toml end to end through the CLI (Ray actors, tiny SD3, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
from models_helpers import run_recipe


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(480)
def test_quickstart_image_trains_exactly_once_and_reward_rises(tmp_path: Path) -> None:
    # Measured (2 cores, ~45 s run): brightness 0.538 -> 0.577 (+0.038), first-quarter std 0.0059
    # (gain 6.5 std); one CI run gained only 0.0075 (1.2 std): which samples train at which
    # version depends on how the actors interleave. As in the Wan quickstart's test, a run that
    # misses the margin gets one fresh retry; missing it twice is the failure.
    results = []
    for attempt in range(2):
        gain, spread = run_recipe("quickstart_image", tmp_path / f"qi-{attempt}", tmp_path, 30, 16)
        results.append((round(gain, 4), round(spread, 4)))
        if gain > max(0.01, 2.0 * spread):
            return
    pytest.fail(f"reward did not rise clearly in two runs (gain, first-quarter std): {results}")

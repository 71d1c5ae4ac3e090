"""recipes/quickstart_image.toml end to end through the CLI (Ray actors, tiny SD3, CPU)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _run(run_dir: Path, cwd: Path) -> tuple[float, float]:
    """One quickstart_image run through the CLI; checks the ledger; returns (gain, first std)."""
    out = subprocess.run(
        [sys.executable, "-m", "unirl_stream.cli", "run", str(ROOT / "recipes" / "quickstart_image.toml"),
         "--run-dir", str(run_dir), "--no-live"],
        capture_output=True, text=True, timeout=230, cwd=cwd)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines() if x.strip()]
    groups = [json.loads(x) for x in (run_dir / "groups.jsonl").read_text().splitlines() if x.strip()]
    ids = [r["sample_id"] for r in rows]
    # exactly once: every journaled sample id has one ledger row, and no row is repeated
    assert len(ids) == len(set(ids)) == sum(g["size"] for g in groups)
    trained = sorted((r for r in rows if r["status"] == "trained"), key=lambda r: r["trained_at_version"])
    assert len(trained) == 30 * 16 and max(r["staleness"] for r in trained) <= 1
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))[-1] == "step_000030"
    q = len(trained) // 4
    first = [r["reward"] for r in trained[:q]]
    last = [r["reward"] for r in trained[-q:]]
    return statistics.mean(last) - statistics.mean(first), statistics.pstdev(first)


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
        gain, spread = _run(tmp_path / f"qi-{attempt}", tmp_path)
        results.append((round(gain, 4), round(spread, 4)))
        if gain > max(0.01, 2.0 * spread):
            return
    pytest.fail(f"reward did not rise clearly in two runs (gain, first-quarter std): {results}")

"""Helpers shared by the foundation tests (imported by name; see conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent

ENTRY_POINTS = """\
[unirl_stream.models]
fixture_model = unirl_test_fixtures:FixtureModel

[unirl_stream.stores]
fixture_store = unirl_test_fixtures:FixtureStore

[unirl_stream.rewards]
fixture_reward = unirl_test_fixtures:FixtureReward
fixture_optionless = unirl_test_fixtures:OptionlessReward

[unirl_stream.stages]
fixture_stage = unirl_test_fixtures:FixtureStage
"""

BASE_RECIPE = """\
# base recipe of the foundation tests: every malformed recipe is this with one change
[run]
name = "fixture"
seed = 3
total_steps = 5

[model]
name = "fixture_model"
path = "tiny:fixture"
device = "cpu"

[model.lora]
rank = 4
alpha = 8.0

[data]
prompts = "prompts.txt"

[sampling]
height = 32
width = 32
num_frames = 5
num_inference_steps = 8
samples_per_prompt = 4

[sampling.sde]
fraction = [0.0, 0.5]

[algorithm]
name = "grpo"
lr = 1e-3

[[reward]]
name = "fixture_reward"
weight = 1.0
options = { value = 2.0 }

[store]
backend = "fixture_store"
options = { capacity = 8 }

[pipeline]
max_staleness = 1
groups_per_step = 2

[[pipeline.stages]]
name = "fixture_stage"
options = { fraction = 0.5 }
"""


def write_dist(root: Path, dist: str, entry_points: str) -> Path:
    """A minimal installed distribution: what pip leaves in site-packages, minus files."""
    info = root / f"{dist.replace('-', '_')}-0.0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    shutil.copy(HERE / "fixture_plugins.py", root / "unirl_test_fixtures.py")
    return root


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def text(self) -> str:
        return self.out + self.err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[-800:]!r}, err={self.err[-800:]!r})"


def run_cli(*args: str) -> CliResult:
    """The real CLI entry point (``unirl_stream.cli:main``), in-process for speed."""
    import contextlib
    import io

    from unirl_stream.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
            code = 0  # pragma: no cover - main always raises SystemExit
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())

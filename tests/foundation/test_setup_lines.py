"""The README's two set-up commands, CI running the same test line, and the test script's
exit codes (pytest's "no tests collected" must fail CI)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = "pip install torch==2.13.0 && pip install -e . && unirl-stream run recipes/quickstart.toml"
TESTS = "pip install torch==2.13.0 && pip install -e '.[dev]' && bash scripts/test.sh"


def _setup_section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("## Set up", 1)[1].split("\n## ", 1)[0]


def test_readme_has_exactly_the_two_setup_commands() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", _setup_section(), re.S)
    assert [b.strip() for b in blocks] == [QUICKSTART, TESTS]


def test_ci_runs_the_readme_test_line() -> None:
    ci = REPO / ".ci" / "run"
    assert os.access(ci, os.X_OK) and os.access(REPO / "scripts" / "test.sh", os.X_OK)
    lines = [x.strip() for x in ci.read_text().splitlines() if x.strip() and not x.startswith("#")]
    assert TESTS in lines
    assert "set -euo pipefail" in lines  # any failing step fails CI


def _script(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, UNIRL_SKIP_APT="1")
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "test.sh"), "-p", "no:cacheprovider", *args],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [("def test_ok():\n    assert 1 + 1 == 2\n", 0),
     ("def test_bad():\n    assert 1 + 1 == 3\n", 1),
     ("def helper():\n    pass\n", 1)],  # no tests collected: pytest says 5, CI must fail
    ids=["pass", "fail", "no-tests"],
)
def test_test_script_exit_codes(tmp_path: Path, body: str, code: int) -> None:
    test_file = tmp_path / "test_probe.py"
    test_file.write_text(body)
    proc = _script(tmp_path, str(test_file))
    assert proc.returncode == code, proc.stdout + proc.stderr
    if "helper" in body:
        assert "collected no tests" in proc.stderr

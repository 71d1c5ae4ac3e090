"""The CLI's commands and exit codes: 0 ok, 2 bad input, 1 runtime failure."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from foundation_helpers import run_cli

from unirl_stream.recipe import decode
from unirl_stream.validate import load_checked


def test_validate_prints_the_resolved_recipe_that_loads_back(base_recipe: Path) -> None:
    result = run_cli("validate", str(base_recipe))
    assert (result.code, result.err) == (0, "")
    printed = decode(tomllib.loads(result.out), "printed")
    original = load_checked(base_recipe)[0]
    # Same recipe, every default spelled out; the prompt path is made absolute.
    assert printed.data.prompts == str(base_recipe.parent / "prompts.txt")
    assert msgspec.structs.replace(printed, data=original.data, source=original.source) == original
    assert "budget_mb = 1024.0" in result.out  # a default the file never wrote


def test_validate_warns_about_missing_weights_and_run_fails(base_recipe: Path) -> None:
    args = ["--set", "model.path=/nowhere/Wan2.2-T2V-A14B-Diffusers"]
    checked = run_cli("validate", str(base_recipe), *args)
    assert checked.code == 0, checked
    warning = checked.err.strip()
    assert warning.startswith(f"warning: {base_recipe}: model.path: weights not found")
    assert "/nowhere/Wan2.2-T2V-A14B-Diffusers" in warning and "huggingface-cli download" in warning
    assert tomllib.loads(checked.out)["model"]["path"] == "/nowhere/Wan2.2-T2V-A14B-Diffusers"
    ran = run_cli("run", str(base_recipe), *args)
    assert ran.code == 2 and ran.out == ""
    assert ran.err.startswith(f"error: {base_recipe}: model.path: weights not found")
    assert "Traceback" not in ran.text


class FakeDriver:
    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    def run(self, **kwargs: Any) -> None:
        self.calls.append(kwargs)
        if self.fail is not None:
            raise self.fail


def _fake_component(monkeypatch: pytest.MonkeyPatch, module: str, obj: Any) -> None:
    """The CLI imports its heavy components inside each command: stand one in."""
    monkeypatch.setitem(sys.modules, module, obj)


def test_run_passes_the_checked_recipe_to_the_driver(
    base_recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = FakeDriver()
    _fake_component(monkeypatch, "unirl_stream.pipeline.driver", driver)
    resume = tmp_path / "old-run"
    resume.mkdir()
    result = run_cli(
        "run", str(base_recipe), "--set", "run.total_steps=7", "--run-dir", str(tmp_path / "r"),
        "--address", "10.0.0.1:6379", "--no-live",
    )
    assert result.code == 0, result
    (call,) = driver.calls
    assert call["recipe"].run.total_steps == 7
    assert call["recipe"].source == str(base_recipe.resolve())
    assert call["run_dir"] == tmp_path / "r" and call["resume"] is None
    assert call["address"] == "10.0.0.1:6379" and call["live"] is False
    result = run_cli("run", str(base_recipe))
    assert result.code == 0
    assert driver.calls[1]["live"] is True and driver.calls[1]["address"] is None
    # --resume: the recipe (if given) is passed to be compared with the saved one, and the
    # --set overrides go to the driver, which applies them to the saved recipe
    result = run_cli("run", str(base_recipe), "--set", "run.total_steps=7", "--resume", str(resume))
    assert result.code == 0, result
    call = driver.calls[2]
    assert call["resume"] == resume and call["recipe"].run.total_steps == 7
    assert call["overrides"] == ["run.total_steps=7"]
    assert run_cli("run", "--resume", str(resume)).code == 0 and driver.calls[3]["recipe"] is None
    both = run_cli("run", "--resume", str(resume), "--run-dir", str(tmp_path / "r"))
    assert both.code == 2 and "--run-dir: not with --resume" in both.err
    neither = run_cli("run")
    assert neither.code == 2 and "give a RECIPE file, or --resume RUN_DIR" in neither.err


@pytest.mark.parametrize("address", ["nohost", "host:", ":80", "host:99999", "host:port"])
def test_run_rejects_bad_addresses(base_recipe: Path, address: str) -> None:
    result = run_cli("run", str(base_recipe), "--address", address)
    assert result.code == 2 and f"--address: expected 'auto' or HOST:PORT, got {address!r}" in result.err


def test_run_rejects_missing_resume_dir(base_recipe: Path, tmp_path: Path) -> None:
    result = run_cli("run", str(base_recipe), "--resume", str(tmp_path / "none"))
    assert result.code == 2 and "--resume: run directory not found" in result.err


def test_runtime_failure_exits_1_with_one_line(base_recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    driver = FakeDriver(fail=RuntimeError("trainer actor died: CUDA out of memory"))
    _fake_component(monkeypatch, "unirl_stream.pipeline.driver", driver)
    result = run_cli("run", str(base_recipe))
    assert result.code == 1
    assert result.err.splitlines()[0] == "error: RuntimeError: trainer actor died: CUDA out of memory"
    assert "Traceback" not in result.text
    debug = run_cli("--debug", "run", str(base_recipe))
    assert debug.code == 1
    assert "Traceback (most recent call last)" in debug.err and "FakeDriver" not in debug.out
    assert "in run" in debug.err  # the frame that raised


def test_debug_shows_traceback_for_bad_input_too(base_recipe: Path) -> None:
    result = run_cli("--debug", "validate", str(base_recipe), "--set", "run.seed=-1")
    assert result.code == 2 and "Traceback" in result.err and "run.seed: expected int >= 0" in result.err


@pytest.mark.parametrize(
    "args",
    [["bogus"], ["validate"], ["validate", "a.toml", "--nope"], ["run", "--run-dir"],
     ["monitor", "/definitely/not/here"], ["report"], ["reward-serve"], ["reward-serve", "--reward", "x", "--port", "-5"]],
)
def test_usage_errors_exit_2_without_traceback(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.code == 2, result
    assert "Traceback" not in result.text and "Error" in result.err


def test_help_and_version() -> None:
    result = run_cli("--help")
    assert result.code == 0
    for command in ("run", "validate", "plugins", "monitor", "report", "reward-serve"):
        assert command in result.out
    from importlib.metadata import version

    assert run_cli("--version").out.strip() == version("unirl-stream")


def test_plugins_json_lists_every_group_with_distributions(fixture_plugins: Path) -> None:
    result = run_cli("plugins", "--json")
    assert result.code == 0
    rows = json.loads(result.out)
    by_key = {(r["group"], r["name"]): r for r in rows}
    assert by_key[("rewards", "fixture_reward")] == {
        "group": "rewards", "name": "fixture_reward", "target": "unirl_test_fixtures:FixtureReward",
        "distribution": "unirl-stream-test-fixtures", "conflict": False,
    }
    # built-ins come from our own pyproject's entry points, through the same mechanism
    assert by_key[("stores", "memory")]["distribution"] == "unirl-stream"
    assert by_key[("models", "wan22")]["target"] == "unirl_stream.models.wan22:Wan22Policy"
    assert {r["group"] for r in rows} == {"stages", "rewards", "models", "algorithms", "stores"}


def test_plugins_table(fixture_plugins: Path) -> None:
    result = run_cli("plugins")
    assert result.code == 0
    for text in ("stages", "rewards", "models", "algorithms", "stores", "fixture_stage",
                 "unirl-stream-test-fixtures"):
        assert text in result.out


def test_monitor_passes_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple] = []

    def monitor_command(run_dir: Path, once: bool, as_json: bool, plot: Path | None, console: Any) -> int:
        seen.append((run_dir, once, as_json, plot))
        return 3

    _fake_component(monkeypatch, "unirl_stream.monitor.cli", SimpleNamespace(monitor_command=monitor_command))
    result = run_cli("monitor", str(tmp_path), "--once", "--json", "--plot", str(tmp_path / "p.png"))
    assert result.code == 3
    assert seen == [(tmp_path, True, True, tmp_path / "p.png")]


def test_reward_serve(fixture_plugins: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []
    server = SimpleNamespace(serve=lambda *a, **kw: calls.append(a))
    _fake_component(monkeypatch, "unirl_stream.rewards.server", server)
    ok = run_cli("reward-serve", "--reward", "fixture_reward", "--port", "5555", "--set", "value=3.5")
    assert ok.code == 0, ok
    assert calls == [("fixture_reward", {"value": 3.5}, "127.0.0.1", 5555)]
    unknown = run_cli("reward-serve", "--reward", "fixture_rewrd")
    assert unknown.code == 2 and "did you mean 'fixture_reward'" in unknown.err
    bad = run_cli("reward-serve", "--reward", "fixture_reward", "--set", "value=high")
    assert bad.code == 2 and "error: --set options.value: expected float, got 'high'" in bad.err
    assert len(calls) == 1  # nothing served on bad input


def test_reward_serve_end_to_end(tmp_path: Path) -> None:
    """The real server behind the command: it says where it listens and answers /health."""
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, "-m", "unirl_stream.cli", "reward-serve", "--reward", "brightness",
         "--port", "0", "--set", "aggregate=min"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        m = re.match(r"serving reward 'brightness' on (http://127\.0\.0\.1:(\d+)) ", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        with urllib.request.urlopen(m.group(1) + "/health", timeout=30) as reply:
            assert reply.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    assert code == 0


def test_main_module_entry(base_recipe: Path, fixture_plugins: Path) -> None:
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(fixture_plugins))
    proc = subprocess.run(
        [sys.executable, "-m", "unirl_stream.cli", "validate", str(base_recipe)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert tomllib.loads(proc.stdout)["run"]["name"] == "fixture"

"""Terminal test: the run's panel in one tmux pane, ``monitor RUN_DIR`` attached from a
second pane; ``capture-pane`` must show staleness and non-zero throughput in both, and
the viewer must notice the end of the run. Skipped only when tmux is not installed.
Uses its own tmux server socket (-L), killed at the end."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def tmux(sock: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", sock, *args], check=True, capture_output=True,
                          text=True, timeout=20).stdout


def wait_capture(sock: str, pane: str, ok, timeout: float = 40.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = tmux(sock, "capture-pane", "-p", "-J", "-S", "-200", "-t", pane)
        if ok(text):
            return text
        time.sleep(0.25)
    raise AssertionError(f"pane {pane} never showed what we waited for:\n{text}")


def rate(text: str, stage: str) -> float:
    m = re.search(rf"{stage}\s+\d+/\d+\s+(\d+\.\d+)\s", text)
    return float(m.group(1)) if m else 0.0


def shows_panel(text: str) -> bool:
    return ("staleness" in text and "samples/s" in text and rate(text, "rollout") > 0
            and re.search(r"policy version \d+ · mean \d+\.\d+ · max \d", text) is not None)


def test_run_and_monitor_panes(tmp_path) -> None:
    sock = f"unirl-monitor-test-{os.getpid()}"
    run_dir = tmp_path / "run"
    py = shlex.quote(sys.executable)
    # pytest's environment carries COLUMNS=80/LINES=24, which rich would trust over the
    # pane's real size; drop them so the panes render at their size.
    env = f"cd {shlex.quote(str(Path.cwd()))} && env -u COLUMNS -u LINES TERM=xterm-256color"
    run_cmd = f"{env} {py} {shlex.quote(str(HERE / 'monitor_demo_run.py'))} {run_dir} 10"
    try:
        tmux(sock, "new-session", "-d", "-s", "t", "-x", "330", "-y", "70", run_cmd)
        tmux(sock, "set-option", "-t", "t", "remain-on-exit", "on")
        deadline = time.monotonic() + 30
        while not (run_dir / "monitor.json").exists():
            assert time.monotonic() < deadline, tmux(sock, "capture-pane", "-p", "-t", "t:0.0")
            time.sleep(0.1)
        assert json.loads((run_dir / "monitor.json").read_text())["state"] == "running"
        rc_file = tmp_path / "viewer.rc"
        mon_cmd = f"{env} {py} -m unirl_stream.cli monitor {run_dir}; echo $? > {rc_file}"
        tmux(sock, "split-window", "-h", "-t", "t:0", mon_cmd)
        viewer = wait_capture(sock, "t:0.1", shows_panel)
        run = wait_capture(sock, "t:0.0", shows_panel)
        for text in (viewer, run):
            assert re.search(r"put / get \d+\.\d+ / \d+\.\d+ MB/s", text)
            assert rate(text, "trainer") > 0 and rate(text, "reward") > 0
        # the run ends: the attached viewer shows the final snapshot and exits by itself
        done = wait_capture(sock, "t:0.1", lambda t: "finished" in t, timeout=40)
        assert "running ·" not in done.split("finished")[-1]
        deadline = time.monotonic() + 20
        while not rc_file.exists() or not rc_file.read_text().strip():
            # the viewer exits by itself once it has shown the final snapshot
            assert time.monotonic() < deadline, tmux(sock, "capture-pane", "-p", "-t", "t:0.1")
            time.sleep(0.2)
        assert rc_file.read_text().strip() == "0"
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True, timeout=20)

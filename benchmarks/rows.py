"""One JSONL schema for every benchmark: benchmark, config, metric, value, unit,
git_commit, machine, time. Import as ``from rows import Rows`` from a script here."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any


def git_commit() -> str:
    if os.environ.get("UNIRL_GIT_COMMIT"):  # set where the tree travels without .git (GPU box)
        return os.environ["UNIRL_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> str:
    desc = f"{platform.machine()} {os.cpu_count()} cpu"
    try:
        import torch

        if torch.cuda.is_available():
            desc += f", {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    except ImportError:
        pass
    return desc


class Rows:
    """Append rows to ``path`` (and keep them for the caller's summary)."""

    def __init__(self, benchmark: str, path: str | Path) -> None:
        self.benchmark, self.path = benchmark, Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.commit, self.machine = git_commit(), machine()
        self.rows: list[dict[str, Any]] = []

    def add(self, config: dict[str, Any], metric: str, value: float, unit: str) -> dict[str, Any]:
        row = {"benchmark": self.benchmark, "config": config, "metric": metric, "value": value,
               "unit": unit, "git_commit": self.commit, "machine": self.machine, "time": time.time()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        self.rows.append(row)
        return row

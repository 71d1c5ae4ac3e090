"""``python -m unirl_stream.monitor RUN_DIR [--once] [--json] [--plot OUT]``: the
``unirl-stream monitor`` command without the CLI (used by the tmux test and scripts)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from unirl_stream.api import UnirlError
from unirl_stream.monitor.viewer import monitor_command


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m unirl_stream.monitor")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--once", action="store_true", help="print one snapshot and exit")
    ap.add_argument("--json", action="store_true", help="print snapshots as JSON")
    ap.add_argument("--plot", type=Path, default=None, help="draw curves to this image")
    args = ap.parse_args(argv)
    try:
        return monitor_command(args.run_dir, args.once, args.json, args.plot, Console())
    except UnirlError as e:
        Console(stderr=True).print(f"[red]error:[/] {e}", highlight=False)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())

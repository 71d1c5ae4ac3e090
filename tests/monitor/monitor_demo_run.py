"""A small stand-in for ``unirl-stream run`` (used by the tmux test; also handy by hand):
an aggregator with the live panel in this terminal, and a worker *subprocess* sending
synthetic events over the ZeroMQ bus, like stage workers in Ray actors.

    python tests/monitor/monitor_demo_run.py RUN_DIR [SECONDS]
    python -m unirl_stream.monitor RUN_DIR          # in another terminal
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from monitor_synth import ETA, RUN_ID, WORKERS, start_workers
from rich.console import Console

from unirl_stream.monitor.aggregator import Aggregator
from unirl_stream.monitor.panel import LiveView


def worker(address: str, seconds: float) -> None:
    rounds = range(int(seconds / 0.2))
    for th in start_workers(address, rounds, dt=0.2):
        th.join()


def main(run_dir: Path, seconds: float) -> int:
    agg = Aggregator(run_dir, RUN_ID, eta=ETA, expected_workers=WORKERS,
                     tick_s=0.5, publish_s=0.25, window_s=4.0).start()
    child = subprocess.Popen([sys.executable, __file__, "--worker", agg.address, str(seconds)])
    view = LiveView(agg.snapshot, Console(), live=True, log_every_s=2.0)
    with view:
        while child.poll() is None:
            time.sleep(0.1)
        time.sleep(1.0)  # let the last events land
        agg.close()
    return child.returncode


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        worker(sys.argv[2], float(sys.argv[3]))
    else:
        sys.exit(main(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 20.0))

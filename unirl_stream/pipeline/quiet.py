"""Keep Ray's and the libraries' own output off the console during a run; keep it in
``RUN_DIR/logs/`` instead. ``--debug`` (``UNIRL_STREAM_DEBUG=1``) turns all of this off.

What it moves, and how:

- the driver's stderr at the file-descriptor level (``logs/driver.log``): Ray's Python
  warnings (the token-authentication notice) and the lines its C++ core worker writes
  itself ("has constructor arguments in the object store"), which no Python logging
  setting reaches. Our own console output is stdout (the panel, the plain lines, the
  summary) or comes after the run (error lines), so nothing of ours is hidden;
- the Ray workers' output (``logs/worker-<pid>.log``): ``log_to_driver=False`` stops Ray
  copying it to the console, and a ``worker_process_setup_hook`` points each worker's
  stdout/stderr at a file in the run directory, progress bars ("Loading weights", "Writing
  model shards") and warnings of transformers/diffusers included.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LOG_DIR = "logs"
_ENV_LOG_DIR = "UNIRL_STREAM_LOG_DIR"
_verbose = [False]  # set by ``verbose`` for the CLI's --debug; restored afterwards


def debug() -> bool:
    return _verbose[0] or os.environ.get("UNIRL_STREAM_DEBUG", "") not in ("", "0")


@contextmanager
def verbose(on: bool) -> Iterator[None]:
    """``with verbose(True):`` nothing is filtered (the CLI's --debug), then as before."""
    saved, _verbose[0] = _verbose[0], on or _verbose[0]
    try:
        yield
    finally:
        _verbose[0] = saved


def ray_options(run_dir: Path) -> dict[str, Any]:
    """Extra ``ray.init`` arguments for a cluster this run starts itself."""
    if debug():
        return {"log_to_driver": True}
    return {"log_to_driver": False,
            "runtime_env": {"env_vars": {_ENV_LOG_DIR: str(Path(run_dir).resolve() / LOG_DIR)},
                            "worker_process_setup_hook": f"{__name__}.worker_setup"}}


def worker_setup() -> None:
    """Runs in every Ray worker process at start (the hook named in ``ray_options``)."""
    log_dir = os.environ.get(_ENV_LOG_DIR)
    if not log_dir:
        return
    try:  # a worker on another node may not see the run directory: then Ray's logs keep it
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(Path(log_dir) / f"worker-{os.getpid()}.log",
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


class QuietConsole:
    """``with QuietConsole(run_dir):`` the driver's fd 2 goes to ``logs/driver.log``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOG_DIR / "driver.log"
        self._saved: int | None = None

    def __enter__(self) -> QuietConsole:
        if debug():
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sys.stderr.flush()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._saved = os.dup(2)
        os.dup2(fd, 2)
        os.close(fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is None:
            return
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._saved = None

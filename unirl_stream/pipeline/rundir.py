"""One writer per run directory: exclusive ``flock`` locks with the holder written inside.

Two locks, two owners:

- ``run.lock``: the driver, for the whole run. A second ``run`` / ``--resume`` on the
  directory is refused at once (exit 2) naming the holder.
- ``journal.lock``: the process that appends to ``ledger.jsonl`` and ``groups.jsonl``
  (the coordinator: a Ray actor, or the driver itself in-process). After a driver was
  killed, its coordinator may live on for a few seconds until the reaper and Ray end it;
  a resumed run's coordinator waits for this lock, so two processes never append to one
  journal.

``flock`` locks belong to the open file and the kernel drops them when the holder dies,
whatever the signal: a lock file left by a dead holder holds no lock and is simply taken
over (its text is rewritten). The text is only there to name the holder in the error.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO

from unirl_stream.api import UserInputError

RUN_LOCK = "run.lock"
JOURNAL_LOCK = "journal.lock"


class RunDirLock:
    """An exclusive lock on ``run_dir/name``; ``release()`` or process death frees it."""

    def __init__(self, run_dir: Path, name: str = RUN_LOCK, role: str = "driver",
                 wait_s: float = 0.0) -> None:
        self.path = Path(run_dir) / name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115
        deadline = time.time() + wait_s
        while True:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() >= deadline:
                    holder = describe(self.path)
                    self._file.close()
                    self._file = None
                    raise UserInputError(
                        f"{run_dir}: the run directory is in use by {holder} ({self.path}); "
                        "wait for that run to end or stop it, then try again") from None
                time.sleep(0.2)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "role": role,
                  "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())}
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps(holder) + "\n")
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file drops the flock
            self._file = None


def describe(path: Path) -> str:
    """'pid 123 on host h (driver, since 2026-...)' from a lock file's text."""
    try:
        h = json.loads(Path(path).read_text(encoding="utf-8").strip() or "{}")
    except (OSError, json.JSONDecodeError):
        h = {}
    if not h:
        return "another process (holder unknown)"
    return f"pid {h.get('pid')} on host {h.get('host')} ({h.get('role')}, since {h.get('started')})"

"""Nothing outlives its run: a small watcher process that ends what a dead driver started.

The driver starts ``python -m unirl_stream.pipeline.reaper`` in a session of its own (so a
``kill`` of the driver's process group spares it) with a pipe on its stdin. The reaper

- snapshots the driver's descendants every ``POLL_S`` (psutil), keeping only processes that
  appeared after the run began: the local Ray cluster (gcs_server, raylet, dashboard and
  its agents, workers), mooncake_master, metadata and reward servers, whatever the run
  spawned;
- reads JSON lines from the pipe: ``{"pids": [...]}`` adds processes that are not the
  driver's descendants but belong to the run (actors on a cluster joined with
  ``--address``, on this host), ``{"session": DIR}`` names the local Ray session (its
  processes are found by that path after the driver is gone), ``{"done": true}`` means the
  driver cleaned up itself;
- when the pipe closes without ``done`` (the driver died, by any signal), sends SIGTERM to
  every process it knows, then SIGKILL after ``GRACE_S`` to what is left.

Why a process and not an ``atexit`` hook: SIGKILL runs no hook. Why not PR_SET_PDEATHSIG
alone: Ray starts its agents itself, and those re-parent to init and outlive the driver
(measured: DashboardAgent and RuntimeEnvAgent alive 2.5 min after a SIGKILL). Processes are
identified by (pid, create time), so a recycled pid is never killed.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from typing import Any

POLL_S = 0.5
GRACE_S = 5.0


class Reaper:
    """The driver's handle: start, tell, and finish cleanly."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unirl_stream.pipeline.reaper", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, text=True)
        self._known: set[int] = set()

    def tell(self, **message: Any) -> None:
        if "pids" in message:
            message["pids"] = sorted(set(message["pids"]) - self._known)
            if not message["pids"]:
                return
            self._known.update(message["pids"])
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):  # the reaper died: nothing to tell
            pass

    def done(self) -> None:
        """The driver stopped everything itself: the reaper exits without killing."""
        self.tell(done=True)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _key(p: Any) -> tuple[int, float]:
    return p.pid, p.create_time()


def _watch(driver_pid: int) -> None:
    import psutil

    try:
        driver = psutil.Process(driver_pid)
        before = {_key(p) for p in driver.children(recursive=True)}
    except psutil.Error:
        return
    tracked: dict[tuple[int, float], Any] = {}
    session: str | None = None
    done = False
    buf = ""
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready:
            chunk = os.read(sys.stdin.fileno(), 65536).decode()
            if not chunk:
                break  # EOF: the driver closed the pipe or died
            buf += chunk
            *lines, buf = buf.split("\n")
            for line in lines:
                msg = json.loads(line) if line.strip() else {}
                done = done or bool(msg.get("done"))
                session = msg.get("session", session)
                for pid in msg.get("pids", []):
                    _track(tracked, pid)
        try:
            for p in driver.children(recursive=True):
                k = _key(p)
                if k not in before and p.pid != os.getpid():
                    tracked[k] = p
        except psutil.Error:
            break  # the driver is gone
    if not done:
        _reap(tracked, session)


def _track(tracked: dict[tuple[int, float], Any], pid: int) -> None:
    import psutil

    try:
        p = psutil.Process(pid)
        tracked[_key(p)] = p
    except psutil.Error:
        pass


def _reap(tracked: dict[tuple[int, float], Any], session: str | None) -> None:
    import psutil

    if session:  # a session's processes that started after the last snapshot
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any(session in part for part in p.info["cmdline"] or []):
                    tracked.setdefault(_key(p), p)
            except psutil.Error:
                continue
    alive = []
    for p in tracked.values():
        try:
            if p.is_running():  # same pid and create time
                p.send_signal(signal.SIGTERM)
                alive.append(p)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(alive, timeout=GRACE_S)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            continue


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the driver, not us
    _watch(int(sys.argv[1]))

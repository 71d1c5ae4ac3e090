"""The console filter: fd-level stderr of the driver and the Ray workers' output go to
RUN_DIR/logs; --debug (UNIRL_STREAM_DEBUG=1) leaves everything on the console."""

from __future__ import annotations

import os
import subprocess
import sys

from unirl_stream.pipeline import quiet


def test_driver_stderr_goes_to_the_run_log_and_comes_back(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("UNIRL_STREAM_DEBUG", raising=False)
    with quiet.QuietConsole(tmp_path):
        os.write(2, b"[E core_worker.cc:1] a C++ line\n")  # what no Python logging setting reaches
        print("our own line", flush=True)
    os.write(2, b"after the run\n")
    out, err = capfd.readouterr()
    assert out == "our own line\n" and err == "after the run\n"
    assert (tmp_path / "logs" / "driver.log").read_text() == "[E core_worker.cc:1] a C++ line\n"


def test_python_warnings_of_the_driver_go_to_the_log(tmp_path, monkeypatch):
    # in a fresh process: pytest's capture replaces sys.stderr, a real driver's writes to fd 2
    monkeypatch.delenv("UNIRL_STREAM_DEBUG", raising=False)
    code = ("import logging, sys, warnings; from unirl_stream.pipeline.quiet import QuietConsole\n"
            f"with QuietConsole({str(tmp_path)!r}):\n"
            "    logging.getLogger('ray').warning('Token authentication is enabled')\n"
            "    warnings.warn('a library warning')\n"
            "print('after', file=sys.stderr)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "after\n"
    log = (tmp_path / "logs" / "driver.log").read_text()
    assert "Token authentication is enabled" in log and "a library warning" in log


def test_debug_keeps_everything_on_the_console(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("UNIRL_STREAM_DEBUG", "1")
    with quiet.QuietConsole(tmp_path):
        os.write(2, b"visible\n")
    assert capfd.readouterr().err == "visible\n"
    assert not (tmp_path / "logs").exists()
    assert quiet.ray_options(tmp_path) == {"log_to_driver": True}


def test_worker_hook_sends_a_workers_output_to_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("UNIRL_STREAM_DEBUG", raising=False)
    opts = quiet.ray_options(tmp_path)
    assert opts["log_to_driver"] is False
    env = {**os.environ, **opts["runtime_env"]["env_vars"]}
    hook = opts["runtime_env"]["worker_process_setup_hook"]
    module, func = hook.rsplit(".", 1)
    code = (f"import importlib, os, sys; importlib.import_module({module!r}).{func}(); "
            "print('Loading weights: 100%'); os.write(2, b'raw stderr\\n'); print(os.getpid())")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == ""
    (log,) = (tmp_path / "logs").glob("worker-*.log")
    lines = log.read_text().splitlines()
    assert lines[:2] == ["Loading weights: 100%", "raw stderr"] and log.name == f"worker-{lines[2]}.log"


def test_verbose_is_scoped(tmp_path, monkeypatch):
    monkeypatch.delenv("UNIRL_STREAM_DEBUG", raising=False)
    with quiet.verbose(True):
        assert quiet.debug() and quiet.ray_options(tmp_path) == {"log_to_driver": True}
    assert not quiet.debug() and quiet.ray_options(tmp_path)["log_to_driver"] is False

"""Mooncake Store plumbing: the master process, client connections, one client per process.

Facts this relies on (FACTS.md, re-checked with mooncake-transfer-engine-non-cuda 0.3.13):
* ``mooncake_master -rpc_address=127.0.0.1`` binds its RPC and metrics ports to loopback;
  the P2P handshake mode needs no metadata server at all.
* Every client opens two listening sockets on all interfaces (transfer engine + RPC);
  no setting restricts them.
* Connecting to a dead master blocks ~90 s unless ``MC_STORE_CLIENT_SETUP_RETRIES=1``;
  we also probe the address with a plain TCP connect first, which fails in milliseconds.
* ``close()`` takes ~2 s, so data clients are shared per process and master address.
* An object lives in the memory segment some client mounted, and dies with that client.
  Data clients therefore mount nothing; one long-lived *holder* (the index actor, or the
  launching process) mounts the segment everybody writes into.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from typing import Any

import msgspec

from unirl_stream.api import StoreError
from unirl_stream.storage import MOONCAKE_ENV

for _k, _v in MOONCAKE_ENV.items():
    os.environ.setdefault(_k, _v)


class ClientSettings(msgspec.Struct, frozen=True):
    master: str  # host:port of mooncake_master
    metadata_server: str = "P2PHANDSHAKE"
    protocol: str = "tcp"
    device_name: str = ""
    local_hostname: str = "127.0.0.1"
    segment_bytes: int = 0  # what a holder mounts; data clients mount 0


_lock = threading.Lock()
_shared: dict[ClientSettings, Any] = {}


def probe(address: str, timeout: float = 3.0) -> None:
    """Raise StoreError naming ``address`` unless something accepts TCP connections there."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as e:
        raise StoreError(
            f"cannot reach the mooncake master at {address!r} ({e}); start it, or drop "
            f"[store] options.master_address to let the store start one on 127.0.0.1"
        ) from None


def connect(settings: ClientSettings, segment: bool = False) -> Any:
    """A new Mooncake client. ``segment``: mount ``settings.segment_bytes`` (a holder)."""
    from mooncake.store import MooncakeDistributedStore

    probe(settings.master)
    client = MooncakeDistributedStore()
    rc = client.setup(
        settings.local_hostname,
        settings.metadata_server,
        settings.segment_bytes if segment else 0,
        0,  # no local staging buffer: we use batch_put_from / batch_get_into on our tensors
        settings.protocol,
        settings.device_name,
        settings.master,
    )
    if rc != 0:
        raise StoreError(
            f"mooncake client setup against master {settings.master!r} failed with code {rc} "
            f"(metadata server {settings.metadata_server!r}, protocol {settings.protocol!r})"
        )
    return client


def shared(settings: ClientSettings) -> Any:
    """This process's data client for ``settings`` (created on first use)."""
    key = msgspec.structs.replace(settings, segment_bytes=0)
    with _lock:
        client = _shared.get(key)
        if client is None:
            client = _shared[key] = connect(key)
        return client


def close_shared(master: str) -> None:
    """Close this process's data clients of one master (before that master stops)."""
    with _lock:
        doomed = [k for k in _shared if k.master == master]
        clients = [_shared.pop(k) for k in doomed]
    for c in clients:
        try:
            c.close()
        except Exception:
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the launching process dies (Linux), so a
    crashed driver leaves no master behind."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: shutdown() still stops it
        pass


class MasterProcess:
    """A mooncake_master on 127.0.0.1 (RPC and metrics ports), stopped with SIGTERM."""

    def __init__(self, proc: subprocess.Popen[bytes], address: str, log_path: str) -> None:
        self.proc = proc
        self.address = address
        self.log_path = log_path

    @classmethod
    def start(cls, port: int = 0, timeout: float = 10.0) -> MasterProcess:
        exe = shutil.which("mooncake_master")
        if exe is None:
            raise StoreError(
                "mooncake_master not found on PATH; install the extra: "
                "pip install 'unirl-stream[mooncake]' (and apt-get install libibverbs1)"
            )
        port = port or free_port()
        log = tempfile.NamedTemporaryFile(prefix="mooncake_master-", suffix=".log", delete=False)
        args = [
            exe,
            "-rpc_address=127.0.0.1",
            f"-rpc_port={port}",
            "-metrics_host=127.0.0.1",
            f"-metrics_port={free_port()}",
        ]
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        log.close()
        master = cls(proc, f"127.0.0.1:{port}", log.name)
        master._wait_ready(timeout)
        return master

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                probe(self.address, timeout=0.2)
                return
            except StoreError:
                time.sleep(0.02)
        self.stop()
        raise StoreError(
            f"mooncake_master did not start on {self.address} (exit code "
            f"{self.proc.returncode}); log: {self.log_path}: {self._log_tail()}"
        )

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-800:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.unlink(self.log_path)
        except OSError:
            pass

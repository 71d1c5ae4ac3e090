"""The endpoints of a ``remote`` reward: pick, fail over, give up, and count.

Each request goes to the usable endpoint with the fewest requests in flight (ties: the one
that has served least). A failed attempt (connection error, timeout, 5xx) benches its
endpoint for ``backoff_s * 2**k`` (k: its consecutive failures so far, at most 30 s) and the
request moves on at once to another endpoint; it waits only when every live endpoint is
benched. An endpoint with more than ``retries`` consecutive failures is dead: it gets one
probe every ``REVIVE_S`` (a restarted replica rejoins), and when every endpoint is dead the
request raises RewardError naming each endpoint and its last error. With one endpoint this
is exactly the single-service retry loop: ``retries + 1`` attempts with backoff.
"""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

import msgspec

from unirl_stream.api import RewardError

REVIVE_S = 30.0  # a dead endpoint is probed again this long after its last failure


class Endpoint:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url = url
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.base = parts.path.rstrip("/")
        self.address = f"{self.host}:{self.port}"
        self.in_flight = 0
        self.served = 0
        self.failures = 0  # consecutive failed attempts
        self.benched_until = 0.0
        self.last_error = ""


class Window(msgspec.Struct):
    """What the pool saw since the last ``take_metrics`` (one reward call, usually)."""

    requests: int = 0
    failed_attempts: int = 0
    latency_s: float = 0.0  # sum of client-side round trips of successful requests
    latency_max_s: float = 0.0
    queue_s: float = 0.0  # sum of server-side queue waits
    queue_depth_max: int = 0
    gpu_util: float = 0.0  # sum over replies that reported one
    gpu_replies: int = 0


class EndpointPool:
    def __init__(self, urls: list[str], retries: int, backoff_s: float, timeout_s: float) -> None:
        self.endpoints = [Endpoint(u) for u in urls]
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._window = Window()

    def acquire(self) -> Endpoint:
        """A usable endpoint (its in-flight count raised), waiting while all are benched."""
        while True:
            with self._lock:
                now = time.monotonic()
                if all(e.failures > self.retries for e in self.endpoints):
                    raise RewardError(self._all_dead_message())
                ready = [e for e in self.endpoints if now >= e.benched_until]
                if ready:
                    ep = min(ready, key=lambda e: (e.failures > self.retries, e.in_flight, e.served))
                    ep.in_flight += 1
                    return ep
                wait = min(e.benched_until for e in self.endpoints) - now
            time.sleep(max(wait, 0.001))

    def failed(self, ep: Endpoint, error: str) -> None:
        with self._lock:
            ep.in_flight -= 1
            ep.last_error = error
            self._window.failed_attempts += 1
            if ep.failures > self.retries:  # a failed revival probe: stay dead
                ep.benched_until = time.monotonic() + REVIVE_S
                return
            ep.benched_until = time.monotonic() + min(self.backoff_s * 2**ep.failures, 30.0)
            ep.failures += 1
            if ep.failures > self.retries:
                ep.benched_until = time.monotonic() + REVIVE_S

    def refused(self, ep: Endpoint) -> None:
        """A 4xx: the endpoint is fine, the batch is not."""
        with self._lock:
            ep.in_flight -= 1

    def succeeded(self, ep: Endpoint, n: int, latency_s: float, queue_s: float, depth: int,
                  gpu_util: float | None) -> None:
        with self._lock:
            ep.in_flight -= 1
            ep.served += n
            ep.failures = 0
            w = self._window
            w.requests += 1
            w.latency_s += latency_s
            w.latency_max_s = max(w.latency_max_s, latency_s)
            w.queue_s += queue_s
            w.queue_depth_max = max(w.queue_depth_max, depth)
            if gpu_util is not None:
                w.gpu_util += gpu_util
                w.gpu_replies += 1

    def take_metrics(self) -> dict[str, float]:
        """Means and maxima since the previous call, plus how many endpoints are alive."""
        with self._lock:
            w, self._window = self._window, Window()
            alive = sum(e.failures <= self.retries for e in self.endpoints)
        out = {"requests": float(w.requests), "failed_attempts": float(w.failed_attempts),
               "endpoints_alive": float(alive)}
        if w.requests:
            out |= {"latency_s": w.latency_s / w.requests, "latency_max_s": w.latency_max_s,
                    "queue_s": w.queue_s / w.requests, "queue_depth_max": float(w.queue_depth_max)}
        if w.gpu_replies:
            out["gpu_util"] = w.gpu_util / w.gpu_replies
        return out

    def _all_dead_message(self) -> str:
        how = f"({self.retries} retries, timeout {self.timeout_s:g} s)"
        if len(self.endpoints) == 1:
            e = self.endpoints[0]
            return (f"remote reward service at {e.address} ({e.url}) failed after {e.failures} "
                    f"attempt(s) {how}: {e.last_error}")
        each = "; ".join(f"{e.address} ({e.url}) after {e.failures} attempt(s): {e.last_error}"
                         for e in self.endpoints)
        return f"all {len(self.endpoints)} remote reward services failed {how}: {each}"

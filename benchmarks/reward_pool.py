"""The reward pool on CPU: per-request overhead, replicas, failover cost, the queue bound.

Servers are ``reward-serve`` processes on 127.0.0.1 serving the ``synthetic`` reward (mean
brightness plus a sleep of ``cost_s`` per sample: it holds no CPU, so two replicas on a
2-core machine behave like two GPUs would). Rows:

- ``request_overhead``: client wall time per request minus the server's own scoring time
  (encode, HTTP on loopback, decode, the pool's bookkeeping), 8 samples of 256 x 256;
- ``throughput`` for 1 and 2 replicas at a cost that makes scoring dominate, and their ratio;
- ``failover_call``: wall time of the call during which one of two replicas is killed;
- ``peak_admitted`` / ``held_mb``: 16 concurrent senders of 1 MiB bodies against a server
  with ``--max-queue 2``: requests (and MiB) the server ever held at once.

Usage: python benchmarks/reward_pool.py [--out benchmarks/results/reward_pool.jsonl]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from rows import Rows  # noqa: E402


def serve(cost_s: float, max_queue: int = 4) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "unirl_stream.rewards.server", "--reward", "synthetic", "--port", "0",
         "--max-queue", str(max_queue), "--set", f"cost_s={cost_s}", "--set", "batch_size=64"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    m = re.search(r"listening on (\S+)", proc.stdout.readline())
    if not m:
        proc.kill()
        raise RuntimeError("reward-serve did not start")
    return proc, m.group(1)


def batch(b: int, side: int) -> tuple[Any, list[Any]]:
    import torch

    from unirl_stream.api import Prompt

    g = torch.Generator().manual_seed(b * side)
    media = torch.randint(0, 256, (b, 1, side, side, 3), generator=g, dtype=torch.uint8)
    return media, [Prompt(id=f"p:{i}", text="a cat") for i in range(b)]


def client(urls: list[str], **kw: Any) -> Any:
    import msgspec

    from unirl_stream.rewards.remote import RemoteReward

    return RemoteReward(msgspec.convert({"urls": urls, "retries": 1, "backoff_s": 0.05, **kw}, RemoteReward.Config))


def overhead(rows: Rows, url: str, n: int = 40) -> None:
    c = client([url], batch_size=8, concurrency=1)
    media, prompts = batch(8, 256)
    c.score(media, prompts)
    t0 = time.perf_counter()
    for _ in range(n):
        c.score(media, prompts)
    wall = (time.perf_counter() - t0) / n
    scoring = scoring_s(url, media, prompts)
    cfg = {"batch": 8, "size": 256, "encoding": "raw", "cost_s": 0.0}
    rows.add(cfg, "request_wall", 1000 * wall, "ms")
    rows.add(cfg, "request_overhead", 1000 * (wall - scoring), "ms")
    print(f"one request of 8 x 256^2: {1000 * wall:.2f} ms wall, of which {1000 * scoring:.2f} ms scoring: "
          f"the pool and transport add {1000 * (wall - scoring):.2f} ms", flush=True)


def scoring_s(url: str, media: Any, prompts: list[Any], n: int = 20) -> float:
    """Mean server-side scoring seconds of a request (the reply's own ``seconds``)."""
    import msgspec

    from unirl_stream.rewards import wire

    c = client([url])
    body = msgspec.msgpack.encode(wire.ScoreRequest(wire.encode_media(media), prompts))
    return sum(c._post_once(c.pool.endpoints[0], body).seconds for _ in range(n)) / n


def replicas(rows: Rows, urls: list[str], cost_s: float) -> None:
    media, prompts = batch(64, 64)
    rates = {}
    for k in (1, 2):
        c = client(urls[:k], batch_size=8, concurrency=2)
        c.score(media, prompts)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 2.0:
            c.score(media, prompts)
            n += 64
        rates[k] = n / (time.perf_counter() - t0)
        rows.add({"replicas": k, "cost_s": cost_s, "batch": 64, "request": 8}, "throughput", rates[k], "samples/s")
        print(f"{k} replica(s), {cost_s * 1000:.0f} ms/sample: {rates[k]:.1f} samples/s", flush=True)
    rows.add({"cost_s": cost_s}, "two_over_one", rates[2] / rates[1], "ratio")


def failover(rows: Rows, procs: list[subprocess.Popen[str]], urls: list[str], cost_s: float) -> None:
    c = client(urls, batch_size=8, concurrency=2)
    media, prompts = batch(64, 64)
    c.score(media, prompts)
    t0 = time.perf_counter()
    c.score(media, prompts)
    normal = time.perf_counter() - t0
    threading.Timer(normal / 3, procs[0].kill).start()
    t0 = time.perf_counter()
    c.score(media, prompts)
    during = time.perf_counter() - t0
    m = c.metrics()
    rows.add({"cost_s": cost_s, "batch": 64}, "normal_call", normal, "s")
    rows.add({"cost_s": cost_s, "batch": 64, "failed_attempts": m["failed_attempts"]}, "failover_call", during, "s")
    print(f"call of 64: {normal:.3f} s normally, {during:.3f} s while a replica dies "
          f"({m['failed_attempts']:.0f} failed attempts moved to the other)", flush=True)


def queue_bound(rows: Rows) -> None:
    """16 senders at once against max_queue = 2: the server holds at most 3 bodies."""
    import msgspec

    from unirl_stream.rewards import wire
    from unirl_stream.rewards.server import RewardServer

    server = RewardServer("synthetic", {"cost_s": 0.02}, port=0, max_queue=2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    media, prompts = batch(1, 600)  # ~1 MiB raw
    body = msgspec.msgpack.encode(wire.ScoreRequest(wire.encode_media(media), prompts))
    c = client([server.url], timeout_s=60)
    senders = [threading.Thread(target=c._post_once, args=(c.pool.endpoints[0], body)) for _ in range(16)]
    t0 = time.perf_counter()
    for s in senders:
        s.start()
    for s in senders:
        s.join()
    wall = time.perf_counter() - t0
    server.shutdown()
    mb = len(body) / 2**20
    cfg = {"senders": 16, "max_queue": 2, "body_mb": round(mb, 2), "cost_s": 0.02}
    rows.add(cfg, "peak_admitted", server.peak_admitted, "requests")
    rows.add(cfg, "held_mb", server.peak_admitted * mb, "MiB")
    rows.add(cfg, "drain_s", wall, "s")
    print(f"16 senders, max_queue 2: at most {server.peak_admitted} bodies held ({server.peak_admitted * mb:.1f} MiB "
          f"of {16 * mb:.1f} MiB sent); drained in {wall:.2f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "reward_pool.jsonl"))
    args = ap.parse_args()
    rows = Rows("reward_pool", args.out)
    cost = 0.005
    started = [serve(0.0), serve(cost), serve(cost)]
    try:
        overhead(rows, started[0][1])
        replicas(rows, [u for _, u in started[1:]], cost)
        failover(rows, [p for p, _ in started[1:]], [u for _, u in started[1:]], cost)
        queue_bound(rows)
    finally:
        for proc, _ in started:
            proc.kill()
            proc.wait(timeout=10)
    print(f"rows -> {args.out}")


if __name__ == "__main__":
    main()

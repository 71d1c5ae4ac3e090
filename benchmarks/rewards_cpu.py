"""Reward scorers on CPU: samples/s per scorer at 64x64 and 256x256, and the remote service
against in-process scoring (``reward_pool.py``: several replicas, failover, backpressure).

Model scorers use tiny random-weight models of the real architectures (built here with
``unirl_stream.rewards.testing``), so the numbers measure our pipeline around the model
(decode, PIL-exact resize, tokenization, batching, OCR engine, transport), not CLIP-H.
The remote rows run the service in a separate process on 127.0.0.1 (as a real deployment
would, minus the network) and score through the ``remote`` plugin.

Usage: python benchmarks/rewards_cpu.py [--quick] [--threads N] [--out benchmarks/results/rewards_cpu.jsonl]
(``--threads 1`` gives steadier numbers on a shared 2-core machine: torch's spinning
intra-op threads suffer most from other processes' load.)
The last line printed is the headline: remote / in-process throughput for PickScore.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from rows import Rows  # noqa: E402


def media(b: int, side: int, frames: int = 1) -> Any:
    import torch

    g = torch.Generator().manual_seed(side)
    return torch.randint(0, 256, (b, frames, side, side, 3), generator=g, dtype=torch.uint8)


GENEVAL = [{"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}]},
           {"tag": "color_attr", "include": [{"class": "cat", "count": 1, "color": "red"}]},
           {"tag": "position", "include": [{"class": "dog", "count": 1},
                                           {"class": "cat", "count": 1, "position": ["left of", 0]}]},
           {"tag": "single_object", "include": [{"class": "car", "count": 1}]}]


def prompts(b: int) -> list[Any]:
    from unirl_stream.api import Prompt

    texts = ['a red sign that says "OPEN"', 'the cat holding a "HELLO" card', 'a dog, "WOOF"', 'the red cat "MEOW"']
    return [Prompt(id=f"bench:{i}", text=texts[i % 4], extra=GENEVAL[i % 4]) for i in range(b)]


def throughput(rewards: Any, b: int, side: int, frames: int, min_s: float) -> float:
    """samples/s of ``rewards.score`` (a RewardSet) on b samples, after one warm-up call."""
    m, p = media(b, side, frames), prompts(b)
    ids = [f"s{i}" for i in range(b)]
    rewards.score(ids, m, p)
    n, t0 = 0, time.perf_counter()
    while True:
        rewards.score(ids, m, p)
        n += b
        elapsed = time.perf_counter() - t0
        if elapsed >= min_s and n >= 2 * b:
            return n / elapsed


def build_models(root: Path) -> dict[str, dict[str, Any]]:
    from unirl_stream.rewards import testing, testing_vlm

    clip = str(testing.save_tiny_clip(root / "clip"))
    head = str(testing.save_aesthetic_head(root / "head.pth"))
    ckpt, hps_clip = testing.save_tiny_hps(root / "hps")
    ir = testing.save_tiny_imagereward(root / "imagereward")
    qwen = str(testing_vlm.save_tiny_qwen_vl(root / "qwen25vl"))
    hps3_base, hps3_ckpt = testing_vlm.save_tiny_hpsv3(root / "hpsv3")
    owl = str(testing.save_tiny_owlv2(root / "owlv2"))
    return {
        # GenEval rows of the 4 tags with a colour and a position among them (its detector runs
        # once per batch; CLIP colours only where a row asks for one)
        "geneval": {"detector": owl, "color_model": clip, "threshold": 0.5, "counting_threshold": 0.6},
        "imagereward": {"checkpoint": str(ir / "ImageReward.pt"), "med_config": str(ir / "med_config.json"),
                        "tokenizer": str(ir / "tokenizer")},
        # tiny Qwen models: 112 x 112 images (16 merged patches); the bytes-only tokenizer
        # makes HPSv3's instruction ~2,650 tokens, so its row is dominated by text
        "vlm_judge": {"model": qwen, "dtype": "float32", "max_pixels": 112 * 112},
        "hpsv3": {"base": str(hps3_base), "checkpoint": str(hps3_ckpt), "dtype": "float32", "pixels": 56 * 56},
        "brightness": {},
        "jpeg_compressibility": {},
        "pickscore": {"model": clip, "processor": clip},
        "clipscore": {"model": clip},
        "aesthetic": {"model": clip, "head": head},
        "hpsv2": {"checkpoint": str(ckpt), "clip": str(hps_clip)},
        "ocr": {},
    }


def bench_scorers(rows: Rows, options: dict[str, dict[str, Any]], quick: bool, threads: int) -> None:
    """One row per (scorer, size): samples/s of a RewardSet holding that scorer alone."""
    from unirl_stream.rewards.combine import RewardSet
    from unirl_stream.rewards.config import RewardSpec

    min_s = 0.3 if quick else 1.5
    for name, opts in options.items():
        b = 4 if name in ("ocr", "vlm_judge", "hpsv3") else 16
        rs = RewardSet.from_specs([RewardSpec(name=name, options={**opts, "batch_size": b})])
        for side in (64, 256):
            sps = throughput(rs, b, side, 1, min_s)
            cfg = {"scorer": name, "size": side, "frames": 1, "batch": b, "model": "tiny", "threads": threads}
            rows.add(cfg, "throughput", sps, "samples/s")
            print(f"{name:22s} {side:4d}x{side:<4d} {sps:10.1f} samples/s", flush=True)


def start_server(name: str, opts: dict[str, Any], threads: int) -> tuple[subprocess.Popen[str], str]:
    sets = [arg for k, v in opts.items() for arg in ("--set", f"{k}={v}")]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "unirl_stream.rewards.server", "--reward", name, "--port", "0", *sets],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    assert proc.stdout is not None
    m = re.search(r"listening on (\S+)", proc.stdout.readline())
    if not m:
        proc.kill()
        raise RuntimeError(f"reward-serve {name} did not start")
    return proc, m.group(1)


def transport_ms(url: str, b: int, side: int, n: int = 20) -> tuple[float, float]:
    """(client wall ms, server scoring ms) per raw request of b samples: the difference is
    what the service adds (encode, HTTP on loopback, decode)."""
    import msgspec

    from unirl_stream.rewards import wire
    from unirl_stream.rewards.remote import RemoteConfig, RemoteReward

    client = RemoteReward(RemoteConfig(url=url, concurrency=1, batch_size=b))
    m, p = media(b, side), prompts(b)
    walls, server = [], []
    for k in range(n + 3):
        t0 = time.perf_counter()
        body = msgspec.msgpack.encode(wire.ScoreRequest(wire.encode_media(m), p))
        reply = client._post_once(client.pool.endpoints[0], body)
        if k >= 3:  # warm-up
            walls.append(time.perf_counter() - t0)
            server.append(reply.seconds)
    return 1000 * sum(walls) / n, 1000 * sum(server) / n


def bench_remote(rows: Rows, options: dict[str, dict[str, Any]], quick: bool, threads: int) -> float:
    """Remote vs in-process for PickScore and brightness at 256x256; returns the PickScore
    raw-encoding ratio (remote / in-process samples/s)."""
    from unirl_stream.rewards.combine import RewardSet
    from unirl_stream.rewards.config import RewardSpec

    min_s, b, side, headline = (0.3 if quick else 1.5), 16, 256, float("nan")
    for name in ("pickscore", "brightness"):
        opts = {**options[name], "batch_size": 8}
        local = RewardSet.from_specs([RewardSpec(name=name, options=opts)])
        base = throughput(local, b, side, 1, min_s)
        cfg = {"scorer": name, "size": side, "batch": b, "model": "tiny", "threads": threads}
        rows.add({**cfg, "where": "in-process"}, "throughput", base, "samples/s")
        proc, url = start_server(name, opts, threads)
        try:
            for encoding, conc in (("raw", 1), ("raw", 2), ("png", 1)):
                remote = RewardSet.from_specs([RewardSpec(name="remote", options={
                    "url": url, "batch_size": 8, "concurrency": conc, "encoding": encoding})])
                sps = throughput(remote, b, side, 1, min_s)
                rc = {**cfg, "encoding": encoding, "concurrency": conc}
                rows.add({**rc, "where": "remote"}, "throughput", sps, "samples/s")
                rows.add(rc, "remote_over_local", sps / base, "ratio")
                print(f"{name:12s} remote/{encoding}/concurrency {conc}: {sps:8.1f} samples/s vs in-process "
                      f"{base:8.1f} ({sps / base:.2f}x)", flush=True)
                if name == "pickscore" and encoding == "raw" and conc == 1:
                    headline = sps / base
            wall, server = transport_ms(url, 8, side)
            rows.add({**cfg, "batch": 8, "encoding": "raw"}, "request_wall", wall, "ms")
            rows.add({**cfg, "batch": 8, "encoding": "raw"}, "request_server_scoring", server, "ms")
            print(f"{name:12s} one raw request of 8: {wall:.1f} ms at the client, {server:.1f} ms scoring "
                  f"in the server: the service adds {wall - server:.1f} ms", flush=True)
        finally:
            proc.kill()
            proc.wait(timeout=10)
    return headline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter timing windows")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--scorers", default="", help="comma-separated subset (default: all; e.g. skip ocr "
                    "where tesseract is not installed)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "rewards_cpu.jsonl"))
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = Rows("rewards_cpu", args.out)
    with tempfile.TemporaryDirectory() as tmp:
        options = build_models(Path(tmp))
        if args.scorers:
            keep = set(args.scorers.split(","))
            options = {k: v for k, v in options.items() if k in keep or k in ("pickscore", "brightness")}
        bench_scorers(rows, options, args.quick, args.threads)
        ratio = bench_remote(rows, options, args.quick, args.threads)
    print(f"rows -> {args.out}")
    print(f"headline: PickScore (tiny) 256x256 through the remote service (raw media, concurrency 1, 127.0.0.1) runs at "
          f"{ratio:.2f}x the in-process samples/s")


if __name__ == "__main__":
    main()

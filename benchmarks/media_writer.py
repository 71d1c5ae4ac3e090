"""What writing sample media costs: the stage's side (``MediaWriter.offer``, which must
never wait) and the writer thread's side (PNG poster + animated WebP encode, per sample),
for the quickstart's 5x32x32 clips and a real Wan2.2 geometry (33x480x832).

    python benchmarks/media_writer.py [--out benchmarks/results/media_writer.jsonl]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from rows import Rows  # noqa: E402

from unirl_stream.stages.media import MediaItem, MediaWriter, encode  # noqa: E402

GEOMETRIES = {"quickstart": (5, 32, 32), "wan22_480p_33f": (33, 480, 832)}


def _frames(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth moving gradient plus noise: compresses like a video, not like pure noise."""
    f, h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x + 4 * t + y) % 256 for t in range(f)])[..., None].repeat(3, -1)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "media_writer.jsonl"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows = Rows("media_writer", args.out)
    rng = np.random.default_rng(0)
    for name, shape in GEOMETRIES.items():
        frames = _frames(shape, rng)
        enc = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            poster, anim = encode(frames)
            enc.append(time.perf_counter() - t0)
        cfg = {"geometry": name, "frames": shape[0], "height": shape[1], "width": shape[2]}
        rows.add(cfg, "encode_s_per_sample", statistics.median(enc), "s")
        rows.add(cfg, "bytes_per_sample", len(poster) + len(anim or b""), "bytes")
        with tempfile.TemporaryDirectory() as tmp:
            w = MediaWriter(Path(tmp), every=1, max_mb=1e4, queue_size=4)
            items = [MediaItem(sample_id=f"p:0@{g}::sample:{k}", group=f"p:0@{g}", prompt="p",
                               version=0, rank=r, reward=0.0, terms={}, advantage=0.0, staleness=0,
                               frames=frames) for g in range(8) for k, r in enumerate(("best", "median", "worst"))]
            offers = []
            for g in range(8):  # 8 groups offered back to back: the queue fills, offers must not wait
                t0 = time.perf_counter()
                w.offer(items[3 * g: 3 * g + 3])
                offers.append(time.perf_counter() - t0)
            w.close(timeout=600)
            rows.add(cfg, "offer_s_max", max(offers), "s")
            rows.add(cfg | {"groups_offered": 8, "queue_size": 4}, "dropped_samples", w.dropped, "samples")
    for r in rows.rows:
        print(r["config"]["geometry"], r["metric"], f"{r['value']:.4g}", r["unit"])


if __name__ == "__main__":
    main()

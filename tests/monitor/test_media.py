"""The media writer: files and index, the disk bound over a long run, drops on a slow disk,
and the reward stage writing best/median/worst of real groups in an in-process run."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from unirl_stream.stages import media as media_mod
from unirl_stream.stages.media import INDEX_FILE, MediaItem, MediaWriter, pick


def _items(version: int, rng: np.random.Generator, frames: int = 5, side: int = 32) -> list[MediaItem]:
    return [MediaItem(sample_id=f"p:{version}@0::sample:{k}", group=f"p:{version}@0",
                      prompt="a red ball", version=version, rank=rank, reward=float(3 - k),
                      terms={"jpeg": float(3 - k)}, advantage=float(1 - k), staleness=1,
                      frames=rng.integers(0, 255, (frames, side, side, 3), dtype=np.uint8))
            for k, rank in enumerate(("best", "median", "worst"))]


def _du(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_pick_best_median_worst() -> None:
    assert pick([0.1, 0.9, 0.5, 0.3, 0.7]) == [(1, "best"), (2, "median"), (0, "worst")]
    assert pick([2.0, 1.0]) == [(0, "best"), (1, "worst")]
    assert pick([5.0]) == [(0, "best")]
    assert pick([]) == []


def test_files_and_index_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(0)
    w = MediaWriter(tmp_path, every=2, max_mb=10.0)
    assert [v for v in range(6) if w.due(v)] == [0, 2, 4]
    items = _items(4, rng)
    assert w.offer(items)
    w.close()
    rows = [json.loads(x) for x in (tmp_path / "media" / INDEX_FILE).read_text().splitlines()]
    assert [r["sample_id"] for r in rows] == [i.sample_id for i in items]
    assert rows[0] | {"t": 0} == {
        "t": 0, "sample_id": "p:4@0::sample:0", "group": "p:4@0", "prompt": "a red ball",
        "version": 4, "rank": "best", "reward": 3.0, "terms": {"jpeg": 3.0}, "advantage": 1.0,
        "staleness": 1, "poster": "media/v000004/p_4_0_best.png",
        "anim": "media/v000004/p_4_0_best.webp", "frames": 5}
    for row, item in zip(rows, items, strict=True):
        poster = np.asarray(Image.open(tmp_path / row["poster"]))
        assert np.array_equal(poster, item.frames[2])  # PNG is lossless: the middle frame exactly
        with Image.open(tmp_path / row["anim"]) as anim:
            assert anim.format == "WEBP" and anim.n_frames == 5 and anim.size == (32, 32)
    assert w.counters() == {"media/written": 3.0, "media/dropped": 0.0, "media/thinned": 0.0}


def test_single_images_have_no_animation(tmp_path) -> None:
    w = MediaWriter(tmp_path, every=1, max_mb=10.0)
    w.offer(_items(0, np.random.default_rng(1), frames=1)[:1])
    w.close()
    row = json.loads((tmp_path / "media" / INDEX_FILE).read_text())
    assert row["anim"] is None and row["frames"] == 1
    assert sorted(p.name for p in (tmp_path / "media" / "v000000").iterdir()) == ["p_0_0_best.png"]


def test_disk_bound_holds_over_a_long_run(tmp_path) -> None:
    rng = np.random.default_rng(2)
    budget_mb = 0.06  # noise does not compress: about 3 versions of 3 samples fit
    w = MediaWriter(tmp_path, every=1, max_mb=budget_mb)
    root = tmp_path / "media"
    sizes = []
    for v in range(40):
        w.offer(_items(v, rng))
        w.close()  # let the writer finish, then measure
        sizes.append(_du(root))
        versions = sorted(p.name for p in root.glob("v*"))
        assert versions[-1] == f"v{v:06d}"  # the newest version is always there
    assert max(sizes) <= budget_mb * 1e6
    assert min(sizes[5:]) > 0.5 * budget_mb * 1e6  # the bound is used, not just emptied
    assert w.thinned > 30 and w.dropped == 0
    versions = sorted(p.name for p in root.glob("v*"))
    assert versions[0] == "v000000" and len(versions) >= 2  # the first version outlives thinning


def test_slow_disk_drops_and_counts_without_blocking(tmp_path, monkeypatch) -> None:
    gate = threading.Event()
    entered = threading.Event()
    real = media_mod.encode

    def slow(frames):
        entered.set()
        gate.wait(30)
        return real(frames)

    monkeypatch.setattr(media_mod, "encode", slow)
    rng = np.random.default_rng(3)
    w = MediaWriter(tmp_path, every=1, max_mb=10.0, queue_size=1)
    assert w.offer(_items(0, rng))  # the thread takes it and blocks in encode
    assert entered.wait(30)
    assert w.offer(_items(1, rng))  # fills the queue
    assert not w.offer(_items(2, rng))  # full: returns at once, dropped
    assert not w.offer(_items(3, rng))
    assert w.dropped == 6
    gate.set()
    w.close()
    assert w.written == 6
    rows = (tmp_path / "media" / INDEX_FILE).read_text().splitlines()
    assert {json.loads(r)["version"] for r in rows} == {0, 1}


def test_counters_left_for_the_summary(tmp_path) -> None:
    from unirl_stream.monitor.summary import media_dropped

    w = MediaWriter(tmp_path, every=1, max_mb=1e-6, source="reward/0")  # nothing fits
    w.offer(_items(0, np.random.default_rng(4)))
    w.close()
    assert json.loads((tmp_path / "logs" / "media-reward_0.json").read_text()) == {
        "media/written": 0.0, "media/dropped": 3.0, "media/thinned": 0.0}
    assert media_dropped(tmp_path) == 3

"""wandb = true with WANDB_MODE=offline: an offline run under RUN_DIR/wandb holding the
logged keys (read back from the .wandb record file), the media, no API key stored."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from monitor_synth import ETA, RUN_ID, WORKERS, emit_round

from unirl_stream.events import MediaSample
from unirl_stream.monitor.aggregator import Aggregator
from unirl_stream.monitor.wandb_sink import resolve_mode

FAKE_KEY = "f" * 32 + "0123456789abcdef"  # looks like a key; must never reach a file


def read_wandb_records(path: Path) -> list:
    """Records of a .wandb file: a 7-byte header, then LevelDB-log framed protobufs
    (32 KiB blocks; 7-byte chunk headers: crc32, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a wandb record file"
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):
            break  # still being written
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


def finished_records(path: Path, timeout: float = 30.0) -> list:
    """wandb's core process may still be writing after ``finish()`` returns (seen under
    load): wait for the run's exit record before reading the history."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, "wandb never wrote the run's exit record"
        time.sleep(0.2)


def history(records: list) -> list[dict]:
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                         for i in r.history.item})
    return rows


def test_offline_run_has_logged_keys(tmp_path, monkeypatch) -> None:
    from unirl_stream.monitor.wandb_sink import WandbSink

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)  # configured, yet WANDB_MODE wins
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    sink = WandbSink(run_dir, RUN_ID, project="unirl-test",
                     config={"pipeline": {"max_staleness": ETA}}, snapshot_every_s=0.0)
    assert sink.mode is None  # the user's WANDB_MODE decides
    agg = Aggregator(run_dir, RUN_ID, eta=ETA, expected_workers=WORKERS, sinks=[sink])
    from PIL import Image

    frames = np.random.default_rng(0).integers(0, 255, (40, 64, 3), dtype=np.uint8)
    (run_dir / "media" / "v000000").mkdir(parents=True)
    Image.fromarray(frames).save(run_dir / "media" / "v000000" / "g_best.png")
    for i in range(4):
        emit_round(agg, i)
        agg.refresh()
        if i % 2 == 0:  # what the reward stage announces after writing a sample's files
            agg.emit(MediaSample(run_id=RUN_ID, source="reward/0", t=time.time(), version=i,
                                 rank="best", reward=0.5, poster="media/v000000/g_best.png"))
    agg.emit(MediaSample(run_id=RUN_ID, source="reward/0", t=time.time(), version=9,
                         rank="worst", poster="media/v000009/gone.png"))  # thinned: skipped
    agg.close()  # finishes the wandb run
    assert agg.bus.sink_errors == 0

    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    rows = history(finished_records(next(runs[0].glob("run-*.wandb"))))
    train = [r for r in rows if "train/loss" in r]
    assert [r["train/step"] for r in train] == [0, 1, 2, 3]
    assert train[3]["train/loss"] == pytest.approx(0.13)
    assert train[3]["reward/mean"] == pytest.approx(0.36)
    assert train[3]["reward/pickscore"] == pytest.approx(0.23)
    assert train[3]["staleness/max"] == 2 and train[3]["train/policy_version"] == 1
    pipe = [r for r in rows if "pipeline/time_s" in r]
    assert pipe and pipe[-1]["pipeline/rollout/samples_per_s"] == pytest.approx(9.0)
    assert pipe[-1]["pipeline/policy_version"] == 1 and pipe[-1]["pipeline/drops/stale"] == 2
    assert pipe[-1]["pipeline/reward_terms/ocr"] == 0.5
    media = [r for r in rows if r.get("media/best/_type") == "image-file"]
    assert [r["train/step"] for r in media] == [0, 2]  # the train step reached when written
    assert (media[0]["media/best/height"], media[0]["media/best/width"]) == (40, 64)
    assert not any("media/worst/_type" in r for r in rows)
    pngs = list((runs[0] / "files" / "media" / "images").rglob("*.png"))
    assert len(pngs) == 2
    for f in run_dir.rglob("*"):
        if f.is_file():
            assert FAKE_KEY.encode() not in f.read_bytes(), f"API key stored in {f}"


def test_mode_resolution(tmp_path, monkeypatch) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandbcfg"))
    assert resolve_mode() == "offline"  # nothing configured
    assert resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert resolve_mode() is None
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password x\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert resolve_mode() is None

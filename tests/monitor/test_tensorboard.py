"""The TensorBoard sink, read back with TensorBoard's own event-file reader (no server)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from unirl_stream.events import MediaSample, TrainStep
from unirl_stream.monitor.aggregator import Aggregator
from unirl_stream.monitor.tensorboard_sink import TB_DIR, TensorBoardSink

RUN_ID = "tb-run"


def _steps() -> list[TrainStep]:
    return [TrainStep(run_id=RUN_ID, source="trainer/0", t=100.0 + i, step=i + 1, policy_version=i + 1,
                      samples=4, loss=0.5 - 0.1 * i, reward_mean=1.0 + i, reward_std=0.25,
                      reward_terms={"jpeg": 2.0 + i}, staleness=[0, 1, 1, i % 2],
                      rewards=[1.0 + i, 1.5 + i, 0.5 + i, 1.0 + i]) for i in range(3)]


def test_scalars_histograms_and_images_read_back(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    frames = np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    (tmp_path / "media" / "v000002").mkdir(parents=True)
    poster = tmp_path / "media" / "v000002" / "g_best.png"
    Image.fromarray(frames).save(poster)
    sink = TensorBoardSink(tmp_path, snapshot_every_s=0.0)
    agg = Aggregator(tmp_path, RUN_ID, eta=1, sinks=[sink])
    for ev in _steps():
        agg.emit(ev)
    agg.emit(MediaSample(run_id=RUN_ID, source="reward/0", t=104.0, sample_id="p:1@2::sample:3",
                         group="p:1@2", prompt="a ball", version=2, rank="best", reward=2.5,
                         poster="media/v000002/g_best.png"))
    agg.close()  # closes the sink: everything flushed
    assert agg.bus.sink_errors == 0

    acc = EventAccumulator(str(tmp_path / TB_DIR), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([0.5, 0.4, 0.3])
    assert [e.value for e in acc.Scalars("reward/jpeg")] == pytest.approx([2.0, 3.0, 4.0])
    assert [e.value for e in acc.Scalars("staleness/max")] == [1.0, 1.0, 1.0]
    assert {"staleness", "reward"} <= set(tags["histograms"])
    hist = acc.Histograms("reward")[-1].histogram_value
    assert (hist.num, hist.min, hist.max, hist.sum) == (4, 2.5, 3.5, pytest.approx(12.0))
    assert acc.Histograms("staleness")[0].histogram_value.sum == 2
    img = acc.Images("media/best")
    assert [e.step for e in img] == [2]
    assert img[0].encoded_image_string == poster.read_bytes()  # the PNG, byte for byte
    assert (img[0].width, img[0].height) == (40, 24)
    assert "pipeline/drops/stale" not in tags["scalars"]  # no drops happened: none invented

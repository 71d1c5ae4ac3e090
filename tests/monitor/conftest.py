from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from monitor_synth import ETA, RUN_ID, WORKERS

from unirl_stream.monitor.aggregator import Aggregator


@pytest.fixture
def live_agg(tmp_path) -> Iterator[Aggregator]:
    agg = Aggregator(tmp_path / "run", RUN_ID, eta=ETA, expected_workers=WORKERS,
                     tick_s=0.4, publish_s=0.2).start()
    yield agg
    agg.close()


@pytest.fixture
def stop_event() -> Iterator[threading.Event]:
    ev = threading.Event()
    yield ev
    ev.set()

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from monitor_synth import ETA, RUN_ID, WORKERS

from unirl_stream.monitor.aggregator import Aggregator


def wait_for(cond: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``cond`` (correctness waits, not timing assertions)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        time.sleep(0.02)


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

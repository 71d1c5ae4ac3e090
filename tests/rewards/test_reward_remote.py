"""Remote reward service: numbers equal the in-process scorer; a dead service fails clearly."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator

import msgspec
import pytest
import torch
from reward_helpers import make_media, make_prompts

from unirl_stream.api import RewardError
from unirl_stream.rewards import wire
from unirl_stream.rewards.combine import RewardSet
from unirl_stream.rewards.config import RewardSpec
from unirl_stream.rewards.remote import RemoteReward
from unirl_stream.rewards.server import RewardServer, main


@pytest.fixture
def pick_server(tiny) -> Iterator[RewardServer]:
    opts = {"model": str(tiny.clip), "processor": str(tiny.clip), "batch_size": 2}
    server = RewardServer("video_pickscore", opts, host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join(timeout=10)


def _remote(url: str, **kw) -> RemoteReward:
    return RemoteReward(msgspec.convert({"url": url, **kw}, RemoteReward.Config))


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_remote_scores_equal_local_scores_exactly(tiny, pick_server: RewardServer, encoding: str) -> None:
    media, prompts = make_media(7, 3, 40, 56, seed=11), make_prompts(7)
    ids = [f"r:{k}" for k in range(7)]
    local = RewardSet.from_specs(
        [RewardSpec(name="video_pickscore", options={"model": str(tiny.clip), "processor": str(tiny.clip), "batch_size": 2})]
    ).score(ids, media, prompts)
    remote_spec = RewardSpec(
        name="remote", options={"url": pick_server.url, "batch_size": 2, "concurrency": 3, "encoding": encoding}
    )
    remote = RewardSet.from_specs([remote_spec]).score(ids, media, prompts)
    assert remote.terms["remote"] == local.terms["video_pickscore"]  # bit for bit
    assert remote.sub_terms["remote/frame_min"] == local.sub_terms["video_pickscore/frame_min"]
    health = json.loads(urllib.request.urlopen(pick_server.url + "/health", timeout=10).read())
    assert health["status"] == "ok" and health["reward"] == "video_pickscore" and health["served"] >= 7


def test_server_rejects_bad_requests_without_retry(pick_server: RewardServer) -> None:
    status, body = pick_server.score(b"\x93not a request")
    assert status == 400 and b"bad request" in body
    blob = wire.MediaBlob(shape=(1, 1, 4, 4, 3), data=b"\x00" * 10)
    req = msgspec.msgpack.encode(wire.ScoreRequest(blob, make_prompts(1)))
    status, body = pick_server.score(req)
    assert status == 400 and b"needs 48 bytes, got 10" in body
    client = _remote(pick_server.url, retries=5, backoff_s=5.0)
    t0 = time.monotonic()
    with pytest.raises(RewardError, match=r"refused the batch: HTTP 400"):
        client._request(torch.zeros(1, 1, 4, 4, 3, dtype=torch.uint8), make_prompts(2))
    assert time.monotonic() - t0 < 4.0  # no backoff sleeps: 4xx is not retried


@pytest.fixture
def brightness_process() -> Iterator[tuple[subprocess.Popen, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "unirl_stream.rewards.server", "--reward", "brightness", "--port", "0",
         "--set", "aggregate=min"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()  # blocks until the server listens (or exits)
    m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
    assert m, f"server did not start: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
    yield proc, m.group(1)
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def test_killing_the_server_mid_batch_fails_after_retries(brightness_process, monkeypatch) -> None:
    proc, url = brightness_process
    media, prompts = make_media(6, 2, 16, 16, seed=12), make_prompts(6)
    client = _remote(url, batch_size=2, concurrency=1, retries=2, backoff_s=0.05, timeout_s=5)
    local = RewardSet.from_specs([RewardSpec(name="brightness", options={"aggregate": "min"})])
    assert client.score(media, prompts).scores == local.score(list("abcdef"), media, prompts).terms["brightness"]

    real_post = RemoteReward._post_once
    calls: list[int] = []

    def post_then_kill(self, ep, body):  # the first request succeeds, then the service dies
        calls.append(1)
        if len(calls) == 2:
            proc.kill()
            proc.wait(timeout=10)
        return real_post(self, ep, body)

    monkeypatch.setattr(RemoteReward, "_post_once", post_then_kill)
    port = url.rsplit(":", 1)[1]
    with pytest.raises(RewardError, match=rf"remote reward service at 127\.0\.0\.1:{port} .*failed after 3 attempt\(s\) \(2 retries.*Connection ?Refused"):
        client.score(media, prompts)
    assert len(calls) == 4  # 1 good request + 3 attempts at the second


def test_main_reports_unknown_reward_with_exit_code_2(capsys) -> None:
    assert main(["--reward", "no_such_reward", "--port", "0"]) == 2
    assert "unknown reward plugin 'no_such_reward'" in capsys.readouterr().err

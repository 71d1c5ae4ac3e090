"""The reward pool: replicas behind ``remote.urls``, failover, all-dead errors, bounded queues.

Servers are real ``reward-serve`` processes on 127.0.0.1 (the synthetic reward: mean
brightness plus a calibrated sleep), stopped by the fixtures.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from reward_helpers import make_media, make_prompts

from unirl_stream.api import Prompt, RewardError, UserInputError
from unirl_stream.rewards import wire
from unirl_stream.rewards.combine import RewardSet
from unirl_stream.rewards.config import RewardSpec
from unirl_stream.rewards.remote import RemoteReward
from unirl_stream.rewards.server import RewardServer

pytestmark = pytest.mark.timeout(120)


def _serve(*sets: str, max_queue: int = 4) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "unirl_stream.rewards.server", "--reward", "synthetic", "--port", "0",
         "--max-queue", str(max_queue), *[a for s in sets for a in ("--set", s)]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
    assert m, f"server did not start: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
    return proc, m.group(1)


@pytest.fixture
def replicas() -> Iterator[list[tuple[subprocess.Popen, str]]]:
    started = [_serve("cost_s=0.004", "batch_size=4") for _ in range(2)]
    yield started
    for proc, _ in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _health(url: str) -> dict[str, Any]:
    return json.loads(urllib.request.urlopen(url + "/health", timeout=10).read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _recipe(tmp_path: Path, urls: list[str], steps: int = 10) -> Any:
    from unirl_stream.recipe import decode

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"prompt number {i}" for i in range(8)) + "\n")
    raw = {
        "run": {"name": "pool", "seed": 1, "total_steps": steps, "output_dir": str(tmp_path / "runs")},
        "model": {"name": "synthetic", "path": "synthetic", "options": {"dim": 8, "steps": 3}},
        "data": {"prompts": str(prompts)},
        "sampling": {"samples_per_prompt": 4},
        "algorithm": {"lr": 0.05, "clip_range": 0.2, "updates_per_batch": 1},
        "reward": [{"name": "remote", "options": {"urls": urls, "batch_size": 2, "concurrency": 1,
                                                  "retries": 1, "backoff_s": 0.05, "timeout_s": 10}}],
        "store": {"backend": "memory", "lease_s": 5.0},
        "pipeline": {"backend": "local", "max_staleness": 1, "rollout_workers": 2, "reward_workers": 1,
                     "groups_per_step": 2, "reward_batch": 8, "tick_s": 0.2},
        "logging": {"live": False},
    }
    return decode(raw, "pool-recipe")


def test_killing_one_replica_mid_run_loses_no_sample(replicas, tmp_path: Path) -> None:
    from unirl_stream.pipeline.driver import run

    (a, url_a), (_, url_b) = replicas
    killed: list[int] = []

    def kill_a_once_it_served() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            served = _health(url_a)["served"]
            if served >= 16:  # mid-run: 160 samples are trained in all
                a.kill()
                killed.append(served)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_once_it_served, daemon=True)
    killer.start()
    run_dir = run(_recipe(tmp_path, [url_a, url_b]), run_dir=tmp_path / "run", live=False)
    killer.join(timeout=10)
    assert killed, "replica A never served 16 samples: the pool did not spread requests"
    rows = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines() if x.strip()]
    ids = [r["sample_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a sample id ended twice"
    started = set()
    for line in (run_dir / "groups.jsonl").read_text().splitlines():
        g = json.loads(line)
        started |= {f"{g['group']}::sample:{k}" for k in range(g["size"])}
    assert set(ids) == started, "a started sample id has no ledger row"
    trained = [r for r in rows if r["status"] == "trained"]
    assert len(trained) == 10 * 2 * 4
    assert not [r for r in rows if "reward" in r["reason"]]  # no sample was lost to the kill
    # B took over: it scored every trained sample A had not (A may finish the one request of
    # 2 samples it holds between our health read and the kill)
    assert _health(url_b)["served"] >= len(trained) - killed[0] - 2


def test_an_overloaded_pool_holds_producers_back_within_the_gate(tmp_path: Path) -> None:
    """A reward service slower than the producers: the reward worker blocks on it, the
    producers idle at the staleness gate, and the store never holds more than the gate allows."""
    from unirl_stream.pipeline.driver import run

    proc, url = _serve("cost_s=0.05", "batch_size=8", max_queue=1)  # 20 samples/s at best
    try:
        run_dir = run(_recipe(tmp_path, [url], steps=4), run_dir=tmp_path / "slow", live=False)
        health = _health(url)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    snaps = [s for s in lines if isinstance(s, dict) and s.get("kind") == "pipeline"]
    peak = max(s["store"]["samples"] for s in snaps)
    bound = (1 + 2) * 2 * 4  # (max_staleness + 2) versions x groups_per_step x samples_per_prompt
    assert 8 <= peak <= bound, peak  # measured 16: the gate, not the reward's speed, bounds it
    rollout = [st for st in snaps[-1]["stages"] if st["name"] == "rollout"][0]
    assert rollout["idle_frac"] > 0.5  # producers mostly waited for the reward to catch up
    assert health["served"] >= 4 * 8  # (the server's own bound: the 12-sender test below)


def test_all_dead_names_every_endpoint() -> None:
    ports = [_free_port(), _free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    client = RemoteReward(msgspec.convert({"urls": urls, "retries": 1, "backoff_s": 0.01, "timeout_s": 2},
                                          RemoteReward.Config))
    t0 = time.monotonic()
    with pytest.raises(RewardError) as err:
        client.score(make_media(4, 1, 8, 8), make_prompts(4))
    assert time.monotonic() - t0 < 5.0
    msg = str(err.value)
    assert msg.startswith("all 2 remote reward services failed (1 retries, timeout 2 s)")
    for p in ports:
        assert re.search(rf"127\.0\.0\.1:{p} \(http://127\.0\.0\.1:{p}\) after 2 attempt\(s\): Connection ?Refused", msg)
    assert client.metrics()["endpoints_alive"] == 0.0


def test_a_run_whose_endpoints_all_die_stops_naming_them(tmp_path: Path) -> None:
    from unirl_stream.pipeline.driver import RunFailed, run

    ports = [_free_port(), _free_port()]
    with pytest.raises(RunFailed) as err:
        run(_recipe(tmp_path, [f"http://127.0.0.1:{p}" for p in ports], steps=2), run_dir=tmp_path / "dead", live=False)
    assert "all 2 remote reward services failed" in str(err.value)
    assert all(f"127.0.0.1:{p}" in str(err.value) for p in ports)


def test_failover_reports_pool_metrics(replicas) -> None:
    (a, url_a), (_, url_b) = replicas
    a.kill()
    a.wait(timeout=10)
    spec = RewardSpec(name="remote", options={"urls": [url_a, url_b], "batch_size": 2, "retries": 0,
                                              "backoff_s": 0.01})
    rewards = RewardSet.from_specs([spec])
    media, prompts = make_media(12, 1, 16, 16, seed=3), make_prompts(12)
    result = rewards.score([p.id for p in prompts], media, prompts)
    want = (media.float().flatten(1).mean(1) / 255.0).tolist()
    assert result.terms["remote"] == want  # every chunk in order, scored once by B
    # what the reward stage puts on its metrics-bus tick
    m = {k.removeprefix("reward_service/remote/"): v for k, v in result.metrics().items()
         if k.startswith("reward_service/remote/")}
    # A fails only the requests in flight on it before its first failure: concurrency = 2
    assert m["requests"] == 6 and 1 <= m["failed_attempts"] <= 2 and m["endpoints_alive"] == 1.0
    assert 0 < m["latency_s"] <= m["latency_max_s"] < 10  # the first includes B's torch import
    # 4 client threads (2 per endpoint), all on B once A is dead: at most 3 wait behind one
    assert 0 <= m["queue_s"] < m["latency_s"] and m["queue_depth_max"] <= 3
    assert "gpu_util" not in m  # CPU server: no utilisation, rather than a made-up 0
    assert rewards.scorers[0].metrics()["requests"] == 0  # a window: read once


def test_full_server_blocks_senders_and_holds_at_most_max_queue_plus_one() -> None:
    """12 senders at once on a server admitting 2 + 1: it never holds more than 3 bodies."""
    server = RewardServer("synthetic", {"cost_s": 0.03}, port=0, max_queue=2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        media = make_media(1, 1, 256, 256, seed=5)  # 196 KiB per body
        body = msgspec.msgpack.encode(wire.ScoreRequest(wire.encode_media(media), make_prompts(1)))
        done: list[float] = []

        def send() -> None:
            t0 = time.perf_counter()
            req = urllib.request.Request(server.url + "/score", data=body, method="POST",
                                         headers={"Content-Type": wire.CONTENT_TYPE})
            reply = msgspec.msgpack.decode(urllib.request.urlopen(req, timeout=30).read(), type=wire.ScoreReply)
            assert reply.queue_depth <= 2
            done.append(time.perf_counter() - t0)

        senders = [threading.Thread(target=send) for _ in range(12)]
        for s in senders:
            s.start()
        for s in senders:
            s.join(timeout=30)
        assert len(done) == 12
        assert server.peak_admitted == 3, server.peak_admitted  # the bound, and it was reached
        assert server.peak_queue <= 2  # behind the batch scored, also between batches: max_queue
        assert max(done) >= 11 * 0.03  # the last sender waited for the others: backpressure
        assert _health(server.url)["max_queue"] == 2
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_options_need_exactly_one_of_url_and_urls() -> None:
    for bad in ({}, {"url": "http://a:1", "urls": ["http://b:1"]}, {"urls": ["http://a:1", "http://a:1"]}):
        with pytest.raises(msgspec.ValidationError, match="url"):
            msgspec.convert(bad, RemoteReward.Config)


def _post(url: str, media: Any, prompts: list) -> tuple[int, Any]:
    body = msgspec.msgpack.encode(wire.ScoreRequest(wire.encode_media(media), prompts))
    req = urllib.request.Request(url + "/score", data=body, method="POST", headers={"Content-Type": wire.CONTENT_TYPE})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, msgspec.msgpack.decode(r.read(), type=wire.ScoreReply)
    except urllib.error.HTTPError as e:
        return e.code, msgspec.msgpack.decode(e.read(), type=wire.ErrorReply)


def _send_into(out: dict[str, Any], url: str, media: Any, name: str) -> None:
    out[name] = _post(url, media, [Prompt(id=name, text="x")])


def test_waiting_requests_are_merged_and_a_bad_one_fails_alone(monkeypatch) -> None:
    server = RewardServer("brightness", {"batch_size": 8}, port=0, max_queue=8)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    real, release, sizes = server.rewards.score, threading.Event(), []

    def score(ids, media, prompts):  # the first call holds the thread until the rest queued
        sizes.append(len(ids))
        release.wait(timeout=20)
        if "bad" in ids:
            raise UserInputError("a bad sample")
        return real(ids, media, prompts)

    monkeypatch.setattr(server.rewards, "score", score)
    try:
        for names in (["a", "b", "c", "d", "e", "f"], ["g", "bad", "h", "i"]):
            release.clear()
            sizes.clear()
            media = make_media(len(names), 1, 16, 16, seed=len(names))
            want = RewardSet.from_specs([RewardSpec(name="brightness")]).score(names, media, make_prompts(len(names)))
            out: dict[str, Any] = {}
            senders = [threading.Thread(target=_send_into, args=(out, server.url, media[k : k + 1], name))
                       for k, name in enumerate(names)]
            senders[0].start()  # alone first: it holds the scoring thread until released
            deadline = time.monotonic() + 20
            while not sizes and time.monotonic() < deadline:
                time.sleep(0.01)
            for s in senders[1:]:
                s.start()
            while server.queue_depth < len(names) - 1 and time.monotonic() < deadline:
                time.sleep(0.01)  # one request in the scorer, the others waiting
            release.set()
            for s in senders:
                s.join(timeout=30)
            for k, name in enumerate(names):
                status, reply = out[name]
                if name == "bad":
                    assert status == 422 and "a bad sample" in reply.error
                else:
                    assert status == 200 and reply.scores == [want.terms["brightness"][k]]
            # the first request alone, then every waiting one in one call; a merged call that
            # fails is retried request by request
            assert sizes == ([1, 5] if "bad" not in names else [1, 3, 1, 1, 1]), sizes
    finally:
        server.shutdown()
        thread.join(timeout=10)

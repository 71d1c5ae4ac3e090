"""``remote`` reward plugin: score through one or several reward services (``rewards/server.py``).

The batch is cut into requests of ``batch_size`` samples, at most ``concurrency`` in flight
per endpoint. ``url`` names one service, ``urls`` several replicas of the same scorer
(``rewards/pool.py`` picks, fails over and gives up). Each attempt has a ``timeout_s``
deadline; connection errors, timeouts and 5xx replies bench the endpoint and the request
moves to another one (up to ``retries`` more attempts per endpoint, exponential backoff
from ``backoff_s``); 4xx replies (bad input, scorer contract broken) fail at once. When
every endpoint stays down the call raises RewardError naming each address and its last error.

The declared ``batch_size`` (what a reward set hands this scorer per call) is
``batch_size * concurrency * len(urls)``, so every endpoint is kept busy. ``metrics()``
(read by the reward set after each call, shipped on the metrics bus with the reward
stage's tick) gives request latency, server queue wait and depth, failed attempts, live
endpoints and GPU utilisation.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from unirl_stream.api import Prompt, RewardError, ScoreBatch
from unirl_stream.rewards import wire
from unirl_stream.rewards.base import check_media
from unirl_stream.rewards.pool import Endpoint, EndpointPool

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


class RemoteConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str = ""
    """Service address, e.g. "http://10.0.0.5:8700" (printed by reward-serve)."""
    urls: list[str] = []
    """Several replicas of the same scorer instead of one ``url``: requests are spread over
    them and a dead one's requests move to the others."""
    timeout_s: Annotated[float, Meta(gt=0)] = 120.0
    """Per attempt; must exceed the servers' queue wait under load (a full server makes
    senders wait, it does not refuse them)."""
    retries: Annotated[int, Meta(ge=0)] = 3
    """Further attempts per endpoint before it counts as dead."""
    backoff_s: Annotated[float, Meta(ge=0)] = 0.5
    """An endpoint's k-th consecutive failure (k = 0, 1, ...) benches it backoff_s * 2**k, at most 30 s."""
    concurrency: Annotated[int, Meta(ge=1)] = 2
    """Requests in flight per endpoint: a server scores them one at a time, so 2 overlaps
    sending the next request with scoring this one."""
    batch_size: Annotated[int, Meta(ge=1)] = 16
    """Samples per request."""
    encoding: Literal["raw", "png"] = "raw"

    def __post_init__(self) -> None:
        if bool(self.url) == bool(self.urls):
            raise ValueError("give exactly one of url (one service) and urls (replicas)")
        for u in self.endpoints():
            parts = urlsplit(u)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"url must look like http://HOST:PORT, got {u!r}")
        if len(set(self.endpoints())) != len(self.endpoints()):
            raise ValueError(f"urls has duplicates: {self.urls}")

    def endpoints(self) -> list[str]:
        return [self.url] if self.url else list(self.urls)


class _Attempt(Exception):
    """One failed attempt; ``retry`` says whether another may help."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class RemoteReward:
    name: ClassVar[str] = "remote"
    Config: ClassVar[type[RemoteConfig]] = RemoteConfig

    def __init__(self, config: RemoteConfig) -> None:
        self.config = config
        self.pool = EndpointPool(config.endpoints(), config.retries, config.backoff_s, config.timeout_s)
        self.device = "cpu"  # media are encoded from host memory
        threads = config.concurrency * len(self.pool.endpoints)
        self.batch_size = config.batch_size * threads
        # One executor for the scorer's life: threads are not rebuilt per call.
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="remote-reward") if threads > 1 else None
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(wire.ScoreReply)
        self._error = msgspec.msgpack.Decoder(wire.ErrorReply)

    def score(self, media: torch.Tensor, prompts: Sequence[Prompt]) -> ScoreBatch:
        check_media(media, len(prompts), self.name)
        bs = self.config.batch_size
        chunks = [(media[i : i + bs], list(prompts[i : i + bs])) for i in range(0, len(prompts), bs)]
        if len(chunks) == 1 or self._threads is None:
            replies = [self._request(m, p) for m, p in chunks]
        else:
            replies = list(self._threads.map(lambda c: self._request(*c), chunks))
        scores: list[float] = []
        terms: dict[str, list[float]] = {}
        for reply in replies:
            scores.extend(reply.scores)  # type: ignore[arg-type]  # None passes through to on_nan
            for k, v in reply.terms.items():
                terms.setdefault(k, []).extend(v)
        return ScoreBatch(scores=scores, terms={k: v for k, v in terms.items() if len(v) == len(scores)})

    def metrics(self) -> dict[str, float]:
        """Pool counters since the previous call (the reward set namespaces them)."""
        return self.pool.take_metrics()

    def _request(self, media: torch.Tensor, prompts: list[Prompt]) -> wire.ScoreReply:
        body = self._encoder.encode(wire.ScoreRequest(wire.encode_media(media, self.config.encoding), prompts))
        while True:
            ep = self.pool.acquire()  # raises RewardError once every endpoint is dead
            t0 = time.perf_counter()
            try:
                reply = self._post_once(ep, body)
            except _Attempt as e:
                if e.retry:
                    self.pool.failed(ep, str(e))
                    continue
                self.pool.refused(ep)
                raise RewardError(f"remote reward service at {ep.address} refused the batch: {e}") from None
            latency = time.perf_counter() - t0
            if len(reply.scores) != len(prompts):
                self.pool.refused(ep)
                raise RewardError(
                    f"remote reward service at {ep.address} returned {len(reply.scores)} scores "
                    f"for {len(prompts)} samples"
                )
            self.pool.succeeded(ep, len(prompts), latency, reply.queue_s, reply.queue_depth, reply.gpu_util)
            return reply

    def _post_once(self, ep: Endpoint, body: bytes) -> wire.ScoreReply:
        cls = http.client.HTTPSConnection if ep.https else http.client.HTTPConnection
        conn = cls(ep.host, ep.port, timeout=self.config.timeout_s)
        try:
            conn.request("POST", ep.base + "/score", body, {"Content-Type": wire.CONTENT_TYPE})
            resp = conn.getresponse()
            data = resp.read()
        except (TimeoutError, OSError, http.client.HTTPException) as e:
            raise _Attempt(f"{type(e).__name__}: {e}", retry=True) from None
        finally:
            conn.close()
        if resp.status == 200:
            try:
                return self._decoder.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                raise _Attempt(f"unreadable reply ({e})", retry=False) from None
        try:
            message = self._error.decode(data).error
        except (msgspec.DecodeError, msgspec.ValidationError):
            message = data[:200].decode("utf-8", "replace")
        raise _Attempt(f"HTTP {resp.status}: {message}", retry=resp.status >= 500)

"""``remote`` reward plugin: score through a reward service (``rewards/server.py``).

The batch is cut into requests of ``batch_size`` samples, at most ``concurrency`` in flight.
Each request has a ``timeout_s`` deadline per attempt and up to ``retries`` more attempts
(exponential backoff from ``backoff_s``) on connection errors, timeouts and 5xx replies;
4xx replies (bad input, scorer contract broken) fail at once. A service that stays down
raises RewardError naming its address and the last error.

The declared ``batch_size`` (what a reward set hands this scorer per call) is
``batch_size * concurrency``, so concurrent requests actually happen.
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

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


class RemoteConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str
    """Service address, e.g. "http://10.0.0.5:8700" (printed by reward-serve)."""
    timeout_s: Annotated[float, Meta(gt=0)] = 120.0
    retries: Annotated[int, Meta(ge=0)] = 3
    backoff_s: Annotated[float, Meta(ge=0)] = 0.5
    """Wait before retry k (k = 0, 1, ...): backoff_s * 2**k, at most 30 s."""
    concurrency: Annotated[int, Meta(ge=1)] = 2
    """Requests in flight: one server scores them one at a time, so 2 overlaps sending the
    next request with scoring this one; more pays with several service replicas."""
    batch_size: Annotated[int, Meta(ge=1)] = 16
    """Samples per request."""
    encoding: Literal["raw", "png"] = "raw"

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must look like http://HOST:PORT, got {self.url!r}")


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
        parts = urlsplit(config.url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.base = parts.path.rstrip("/")
        self.address = f"{self.host}:{self.port}"
        self.device = "cpu"  # media are encoded from host memory
        self.batch_size = config.batch_size * config.concurrency
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(wire.ScoreReply)
        self._error = msgspec.msgpack.Decoder(wire.ErrorReply)

    def score(self, media: torch.Tensor, prompts: Sequence[Prompt]) -> ScoreBatch:
        check_media(media, len(prompts), self.name)
        bs = self.config.batch_size
        chunks = [(media[i : i + bs], list(prompts[i : i + bs])) for i in range(0, len(prompts), bs)]
        if len(chunks) == 1 or self.config.concurrency == 1:
            replies = [self._request(m, p) for m, p in chunks]
        else:
            with ThreadPoolExecutor(min(self.config.concurrency, len(chunks))) as pool:
                replies = list(pool.map(lambda c: self._request(*c), chunks))
        scores: list[float] = []
        terms: dict[str, list[float]] = {}
        for reply in replies:
            scores.extend(reply.scores)  # type: ignore[arg-type]  # None passes through to on_nan
            for k, v in reply.terms.items():
                terms.setdefault(k, []).extend(v)
        return ScoreBatch(scores=scores, terms={k: v for k, v in terms.items() if len(v) == len(scores)})

    def _request(self, media: torch.Tensor, prompts: list[Prompt]) -> wire.ScoreReply:
        body = self._encoder.encode(wire.ScoreRequest(wire.encode_media(media, self.config.encoding), prompts))
        attempts = self.config.retries + 1
        last = ""
        for k in range(attempts):
            try:
                reply = self._post_once(body)
            except _Attempt as e:
                last = str(e)
                if not e.retry:
                    raise RewardError(f"remote reward service at {self.address} refused the batch: {last}") from None
                if k + 1 < attempts:
                    time.sleep(min(self.config.backoff_s * 2**k, 30.0))
                continue
            if len(reply.scores) != len(prompts):
                raise RewardError(
                    f"remote reward service at {self.address} returned {len(reply.scores)} scores "
                    f"for {len(prompts)} samples"
                )
            return reply
        raise RewardError(
            f"remote reward service at {self.address} ({self.config.url}) failed after {attempts} "
            f"attempt(s) ({self.config.retries} retries, timeout {self.config.timeout_s:g} s): {last}"
        )

    def _post_once(self, body: bytes) -> wire.ScoreReply:
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=self.config.timeout_s)
        try:
            conn.request("POST", self.base + "/score", body, {"Content-Type": wire.CONTENT_TYPE})
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

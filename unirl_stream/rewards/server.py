"""Remote reward service: any registered scorer over HTTP (``unirl-stream reward-serve``).

Heavy reward models (CLIP-H, OCR, VLM judges) can live on other machines: this process
loads one scorer (by plugin name, with its options) and serves

- ``POST /score``: msgpack ``wire.ScoreRequest`` -> ``wire.ScoreReply`` (raw values,
  NaN/None passed through so the client's reward set applies ``on_nan``), scored in
  chunks of the scorer's ``batch_size`` exactly like an in-process ``RewardSet``;
- ``GET /health``: JSON ``wire.Health``.

Admission is bounded: at most ``max_queue`` requests wait, body read, for the scoring
thread (plus the one it scores). A further request's body stays unread in its socket until
a slot frees, so its sender blocks in TCP (backpressure up the client, the reward stage and,
through the store's staleness gate, the producers) and the server never holds more than
``max_queue + 1`` request bodies, however many clients connect. Each reply reports its
queue wait, the queue depth at admission and the GPU's utilisation, for the client's metrics.

Status codes: 400 bad request (client's fault, not retried), 422 the scorer rejected the
input or broke its contract (not retried), 500 unexpected server error (retried).
Requests are scored on one long-lived thread (``_ScoringLoop``): models are not assumed
thread-safe, and torch's OpenMP pool belongs to the thread that calls it, so scoring on each
request's fresh handler thread would rebuild the pool per request. Requests waiting in the
queue are coalesced into one scorer call, up to the scorer's ``batch_size`` samples (same
frame shape only): small requests from many clients fill the model's batch. A merged call
that fails is retried request by request, so an error reaches only the request that caused it. The
server binds 127.0.0.1 unless told otherwise. No pickle anywhere.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec

from unirl_stream.api import RewardError, UnirlError, UserInputError
from unirl_stream.rewards import wire
from unirl_stream.rewards.config import RewardSpec

log = logging.getLogger(__name__)
MAX_BODY = 2 << 30  # 2 GiB: ~60 samples of 81 x 480 x 832 raw video frames


class RewardServer:
    """The service without its loop: tests run ``serve_forever`` in a thread."""

    def __init__(
        self, reward: str, options: dict[str, Any], host: str = "127.0.0.1", port: int = 0, max_queue: int = 4
    ) -> None:
        from unirl_stream.rewards.combine import RewardSet

        if max_queue < 0:
            raise UserInputError(f"reward-serve: --max-queue must be >= 0, got {max_queue}")

        self.reward = reward
        self.rewards = RewardSet.from_specs([RewardSpec(name=reward, options=options)], where="reward-serve")
        self.scorer = self.rewards.scorers[0]
        self.loop = _ScoringLoop(self._score_batch, max(1, int(self.scorer.batch_size)))
        self.served = 0
        self.max_queue = max_queue
        self._slots = threading.BoundedSemaphore(max_queue + 1)  # waiting + the one scored
        self._count_lock = threading.Lock()
        self.peak_admitted = 0
        self._admitted = 0
        self._decoder = msgspec.msgpack.Decoder(wire.ScoreRequest)
        self._encoder = msgspec.msgpack.Encoder()
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True

    @property
    def queue_depth(self) -> int:
        """Requests admitted and waiting for the scoring thread now (at most ``max_queue``)."""
        return self.loop.waiting()

    @property
    def peak_queue(self) -> int:
        """The deepest queue a request joined."""
        return self.loop.peak

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.httpd.server_address[0]}:{self.port}"

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.1)

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.loop.close()

    def health(self) -> bytes:
        return msgspec.json.encode(
            wire.Health("ok", self.reward, int(self.scorer.batch_size), str(self.scorer.device), self.served,
                        self.max_queue, self.queue_depth, self.peak_queue)
        )

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the ``max_queue + 1`` admission slots (blocks while all are taken)."""
        self._slots.acquire()
        with self._count_lock:
            self._admitted += 1
            self.peak_admitted = max(self.peak_admitted, self._admitted)
        try:
            yield
        finally:
            with self._count_lock:
                self._admitted -= 1
            self._slots.release()

    def _score_batch(self, reqs: list[wire.ScoreRequest], media: Any) -> list[tuple[list[float | None], dict]]:
        """On the scoring thread: score requests merged into one batch, split per request."""
        prompts = [p for r in reqs for p in r.prompts]
        result = self.rewards.score([p.id for p in prompts], media, prompts)
        name, out, start = self.rewards.names[0], [], 0
        for r in reqs:
            end = start + len(r.prompts)
            subs = {k.split("/", 1)[1]: v[start:end] for k, v in result.sub_terms.items()}
            out.append((result.terms[name][start:end], subs))
            start = end
        return out

    def score(self, body: bytes) -> tuple[int, bytes]:
        """(HTTP status, msgpack reply) for one /score body."""
        try:
            req = self._decoder.decode(body)
            media = wire.decode_media(req.media)
            if media.shape[0] != len(req.prompts):
                raise UserInputError(f"{media.shape[0]} media samples but {len(req.prompts)} prompts")
        except (msgspec.ValidationError, msgspec.DecodeError, UserInputError) as e:
            return 400, self._encoder.encode(wire.ErrorReply(f"bad request: {e}", "user"))
        t0 = time.perf_counter()
        future, depth = self.loop.submit(req, media)
        try:
            (scores, subs), started = future.result()
            with self._count_lock:
                self.served += len(req.prompts)
        except UserInputError as e:
            return 422, self._encoder.encode(wire.ErrorReply(str(e), "user"))
        except RewardError as e:
            return 422, self._encoder.encode(wire.ErrorReply(str(e), "reward"))
        except Exception as e:  # the client sees the server's message and retries
            log.exception("reward %s failed", self.reward)
            return 500, self._encoder.encode(wire.ErrorReply(f"{type(e).__name__}: {e}", "internal"))
        queued = started - t0
        reply = wire.ScoreReply(scores, subs, time.perf_counter() - started, queued, depth,
                                gpu_utilization(str(self.scorer.device)))
        return 200, self._encoder.encode(reply)


class _Job:
    __slots__ = ("req", "media", "future")

    def __init__(self, req: wire.ScoreRequest, media: Any) -> None:
        self.req, self.media, self.future = req, media, Future()


class _ScoringLoop:
    """One thread scoring queued requests, merging those that wait into one call.

    ``submit`` returns a Future of (that request's share of ``score_batch``'s result, the
    ``perf_counter`` time its batch started) and the queue depth it joined. At most
    ``max_samples`` samples are merged (a larger request goes alone), and only requests of
    one frame shape. The depth counts the requests waiting behind the batch being scored
    or, while the thread is between batches, behind the one it takes next; a batch is
    marked done before its futures resolve, so its slots free only once it stops counting.
    With ``max_queue + 1`` admission slots the depth is therefore at most ``max_queue``.
    """

    def __init__(self, score_batch: Callable[[list[wire.ScoreRequest], Any], list[Any]], max_samples: int) -> None:
        self.score_batch, self.max_samples = score_batch, max_samples
        self.calls = 0  # scorer calls made (fewer than requests when requests were merged)
        self.peak = 0  # deepest queue a request joined
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._busy = False  # a batch is being scored
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="reward-score", daemon=True)
        self._thread.start()

    def waiting(self) -> int:
        """Requests queued behind the batch being scored (or the next one taken)."""
        with self._cond:
            return self._depth()

    def _depth(self) -> int:
        return len(self._jobs) - (0 if self._busy or not self._jobs else 1)

    def submit(self, req: wire.ScoreRequest, media: Any) -> tuple[Future, int]:
        job = _Job(req, media)
        with self._cond:
            self._jobs.append(job)
            depth = self._depth()
            self.peak = max(self.peak, depth)
            self._cond.notify()
        return job.future, depth

    def close(self) -> None:
        """End the thread once the queued requests are scored."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            outcomes = self._score(batch)
            with self._cond:
                self._busy = False
            for job, (ok, value) in zip(batch, outcomes, strict=True):
                if ok:
                    job.future.set_result(value)
                else:
                    job.future.set_exception(value)

    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._jobs or self._closed)
            if not self._jobs:
                return None
            head = self._jobs.popleft()
            batch, n = [head], len(head.req.prompts)
            while self._jobs and n + len(self._jobs[0].req.prompts) <= self.max_samples:
                if self._jobs[0].media.shape[1:] != head.media.shape[1:]:
                    break  # stays at the front: the next batch's head
                job = self._jobs.popleft()
                batch.append(job)
                n += len(job.req.prompts)
            self._busy = True
            return batch

    def _score(self, batch: list[_Job]) -> list[tuple[bool, Any]]:
        """(ok, (share, started) or the exception) per job, in order."""
        import torch

        started = time.perf_counter()
        self.calls += 1
        try:
            media = torch.cat([j.media for j in batch]) if len(batch) > 1 else batch[0].media
            shares = self.score_batch([j.req for j in batch], media)
        except Exception as e:  # an error belongs to one request: retry the merged ones alone
            if len(batch) > 1:
                return [out for j in batch for out in self._score([j])]
            return [(False, e)]
        return [(True, (share, started)) for share in shares]


def gpu_utilization(device: str) -> float | None:
    """NVML's utilisation of ``device`` in percent; None on CPU or when NVML is missing."""
    if not device.startswith("cuda"):
        return None
    try:
        import torch

        return float(torch.cuda.utilization(torch.device(device)))
    except Exception:  # no pynvml / no driver: utilisation is advisory, never an error
        return None


def _handler(server: RewardServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes: no delayed-ACK stall

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.rstrip("/") == "/health":
                self._send(200, server.health(), "application/json")
            else:
                self._send(404, b'{"error": "not found; endpoints: GET /health, POST /score"}', "application/json")

        def do_POST(self) -> None:  # noqa: N802
            if self.path.rstrip("/") != "/score":
                self._send(404, msgspec.msgpack.encode(wire.ErrorReply("not found: POST /score", "user")))
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                self.close_connection = True
                self._send(400, msgspec.msgpack.encode(wire.ErrorReply(f"bad Content-Length {length}", "user")))
                return
            with server.slot():  # until admitted, the body stays in the socket: the sender waits
                status, reply = server.score(self.rfile.read(length))
            self._send(status, reply)

        def _send(self, status: int, body: bytes, ctype: str = wire.CONTENT_TYPE) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


def serve(
    reward: str,
    options: dict[str, Any],
    host: str = "127.0.0.1",
    port: int = 0,
    ready: Callable[[int], None] | None = None,
    max_queue: int = 4,
) -> None:
    """Load ``reward`` with ``options`` and serve it until interrupted (blocking).

    ``port = 0`` picks a free port; ``ready(port)`` is called once the socket listens.
    """
    server = RewardServer(reward, options, host, port, max_queue)
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C and SIGTERM stop the server whatever this process inherited (a shell's
        # background job starts with SIGINT ignored, and Python then leaves it ignored).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.default_int_handler)
    if ready is not None:
        ready(server.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


def options_from_sets(items: list[str]) -> dict[str, Any]:
    """``["model=/w/pick", "aggregate=min"]`` -> options dict (values parsed as TOML)."""
    from unirl_stream.tomlio import apply_overrides

    options: dict[str, Any] = {}
    apply_overrides(options, items)
    return options


def main(argv: list[str] | None = None) -> int:
    """``unirl-stream reward-serve --reward NAME [--host H] [--port P] [--set k=v ...]``."""
    ap = argparse.ArgumentParser(prog="unirl-stream reward-serve", description=__doc__.splitlines()[0])
    ap.add_argument("--reward", required=True, help="reward plugin name (see `unirl-stream plugins`)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=0, help="port (default 0: a free one, printed)")
    ap.add_argument("--max-queue", type=int, default=4,
                    help="requests admitted and waiting for the scorer, at most (default 4); "
                         "more senders block until a slot frees")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="scorer option, value parsed as TOML else kept as a string (repeatable), "
                         "e.g. --set aggregate=min --set batch_size=8")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def ready(port: int) -> None:
        print(f"reward-serve: {args.reward} listening on http://{args.host}:{port}", flush=True)

    try:
        serve(args.reward, options_from_sets(args.set), args.host, args.port, ready, args.max_queue)
    except UnirlError as e:
        print(f"reward-serve: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

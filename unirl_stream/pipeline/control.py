"""The typed client of the run's coordinator, and the weight channel built on it.

``ControlClient`` implements ``control.ControlPlane`` (what stages may ask) plus the calls
only the driver makes, over a Ray actor handle or a local ``Coordinator`` alike: under Ray
each call is one actor round trip. It pickles as its target, so the driver hands the same
client to every Ray actor.
"""

from __future__ import annotations

from typing import Any

from unirl_stream.control import Gate, GroupTicket, WeightUpdate
from unirl_stream.events import SampleOutcome
from unirl_stream.pipeline.coordinator import Worker


class ControlClient:
    def __init__(self, target: Any) -> None:
        self.target = target
        self.is_ray = hasattr(target, "_actor_id")

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return (ControlClient, (self.target,))

    def _call(self, name: str, *args: Any) -> Any:
        method = getattr(self.target, name)
        if not self.is_ray:
            return method(*args)
        import ray

        return ray.get(method.remote(*args))

    # ------------------------------------------------------------ control.ControlPlane
    def start_group(self, worker: str) -> GroupTicket | None:
        return self._call("start_group", worker)

    def group_written(self) -> None:
        self._call("group_written")

    def drop_group(self, n: int = 1) -> None:
        self._call("drop_group", n)

    def finalize(self, rows: list[SampleOutcome]) -> int:
        return self._call("finalize", rows)

    def gate(self) -> Gate:
        return self._call("gate")

    def stopping(self) -> bool:
        return self._call("stopping")

    def heartbeat(self, source: str, processed: int, pid: int, host: str) -> bool:
        return self._call("heartbeat", source, processed, pid, host)

    def post(self, key: str, value: str) -> None:
        self._call("post", key, value)

    def read(self, key: str) -> str | None:
        return self._call("read", key)

    def fail(self, message: str) -> None:
        self._call("fail", message)

    # ------------------------------------------------------------ the driver's calls
    def batch_sealed(self) -> bool:
        return self._call("batch_sealed")

    def stop(self) -> None:
        self._call("stop")

    def close_out(self, reason: str) -> int:
        return self._call("close_out", reason)

    def errors(self) -> list[str]:
        return self._call("errors")

    def workers(self) -> dict[str, Worker]:
        return self._call("workers")

    def progress(self) -> tuple[int, ...]:
        return self._call("progress")

    def close(self) -> None:
        self._call("close")


class CoordinatorWeights:
    """``control.WeightChannel`` through the coordinator: under Ray the coordinator puts the
    bytes into the object store itself, so it owns them and they outlive a crashed trainer;
    producers on the same node read the object zero-copy. In-process: plain bytes."""

    def __init__(self, client: ControlClient) -> None:
        self.client = client

    def publish(self, version: int, blob: bytes) -> None:
        self.client._call("publish", version, [blob], self.client.is_ray)

    def poll(self, held: int) -> WeightUpdate | None:
        got = self.client._call("latest", held)
        if got is None:
            return None
        version, (handle,), published_at = got
        if self.client.is_ray:
            import ray

            handle = ray.get(handle)
        return WeightUpdate(version, bytes(handle), published_at)

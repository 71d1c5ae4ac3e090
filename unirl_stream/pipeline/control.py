"""Handles that stages use to reach the coordinator, the same way with or without Ray."""

from __future__ import annotations

from typing import Any, Protocol


class Control:
    """Synchronous calls on the coordinator: a Ray actor handle or a local object.

    ``ctl.start_group("rollout/0")`` works in both cases; in Ray mode each call is one
    actor round trip (~1 ms), made at most once per group or per trainer step.
    """

    def __init__(self, target: Any) -> None:
        self.target = target
        self.is_ray = hasattr(target, "_actor_id")

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.target, name)
        if not self.is_ray:
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            import ray

            return ray.get(method.remote(*args, **kwargs))

        return call

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return (Control, (self.target,))


class WeightChannel(Protocol):
    """Control-plane weight transport: the trainer publishes, producers poll.

    Kept apart from the sample store (data plane). A later NCCL broadcast implements the
    same two calls; the coordinator then carries only versions.
    """

    def publish(self, version: int, blob: bytes) -> None: ...

    def poll(self, held: int) -> tuple[int, bytes, float] | None:
        """(version, weights, published_at) if newer than ``held``, else None."""
        ...


class CoordinatorWeights:
    """Weights as a Ray object owned by the coordinator (outlives a crashed trainer), or
    plain bytes in-process. Producers on the same node read the object zero-copy."""

    def __init__(self, ctl: Control) -> None:
        self.ctl = ctl

    def publish(self, version: int, blob: bytes) -> None:
        self.ctl.publish(version, [blob], as_object=self.ctl.is_ray)

    def poll(self, held: int) -> tuple[int, bytes, float] | None:
        got = self.ctl.latest(held)
        if got is None:
            return None
        version, (handle,), published_at = got
        if self.ctl.is_ray:
            import ray

            handle = ray.get(handle)
        return version, bytes(handle), published_at

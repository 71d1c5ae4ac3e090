"""Contracts of the control plane: what a stage may ask of its run, and how weights travel.

The run's coordinator (``pipeline/coordinator.py``, a Ray actor or a plain object) implements
``ControlPlane``; a stage reaches it as ``ctx.control``, a typed client the pipeline builds
(``pipeline/control.py``), and receives the weight transport as ``ctx.weights`` (a
``WeightChannel``). Like ``api.py`` this module imports nothing heavy, and everything that
crosses a process boundary here is a msgspec Struct.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from unirl_stream.events import SampleOutcome


class GroupTicket(msgspec.Struct, frozen=True):
    """Permission to sample one group now."""

    position: int  # global group index = prompt cursor position (unique in a run)
    group: str  # group id
    prompt_index: int  # index of the prompt in the run's prompt list
    prompt_id: str
    size: int
    version: int  # the policy version the producer must hold (or newer)


class Gate(msgspec.Struct, frozen=True):
    """The staleness gate now: groups started, groups allowed, the trainer's version."""

    position: int  # groups started
    allowance: int  # groups that may have been started at this version
    version: int  # the newest published policy version (the trainer's)
    dropped_groups: int


class WeightUpdate(msgspec.Struct, frozen=True):
    version: int
    blob: bytes  # the policy's exported weights (safetensors bytes)
    published_at: float  # time.time() at the publisher


class ControlPlane(Protocol):
    """What a stage may ask of its run. Every call is one round trip (~1 ms under Ray),
    made at most once per group or per trainer step, plus one heartbeat per 100 ms."""

    def start_group(self, worker: str) -> GroupTicket | None:
        """A ticket to sample one group now; None when the gate is closed or the run stops."""
        ...

    def group_written(self) -> None:
        """A ticket's whole group is in the store (the producer's one ``put`` returned)."""
        ...

    def drop_group(self, n: int = 1) -> None:
        """``n`` started groups will never reach an optimizer step: their gate places go back."""
        ...

    def finalize(self, rows: list[SampleOutcome]) -> int:
        """Ledger rows, exactly once per sample id (repeats are ignored); returns rows written."""
        ...

    def gate(self) -> Gate: ...

    def stopping(self) -> bool: ...

    def heartbeat(self, source: str, processed: int, pid: int, host: str) -> bool:
        """A worker's running total of processed samples; returns ``stopping``."""
        ...

    def post(self, key: str, value: str) -> None:
        """A small rendezvous board (e.g. the trainer group's address, posted by rank 0)."""
        ...

    def read(self, key: str) -> str | None: ...

    def fail(self, message: str) -> None:
        """An error that must end the run (e.g. a NaN reward with on_nan = "fail")."""
        ...


class WeightChannel(Protocol):
    """The trainer publishes, producers poll; kept apart from the sample store (data plane).
    Another transport (e.g. an NCCL broadcast) implements the same two calls."""

    def publish(self, version: int, blob: bytes) -> None: ...

    def poll(self, held: int) -> WeightUpdate | None:
        """The newest weights if newer than ``held`` (any, when ``held`` < 0), else None."""
        ...

"""A stage that never produces: the trainer waits for its field forever (a starved run)."""

from __future__ import annotations

from typing import Any

from unirl_stream.api import FieldSpec, StepResult


class NeverProduces:
    def __init__(self, ctx: Any) -> None:
        ctx.store.declare([FieldSpec("verdict", "uint8")])

    def step(self) -> StepResult:
        return StepResult()

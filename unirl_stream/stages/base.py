"""What every stage gets, and the one small base class.

A stage is one method, ``step()``: do one unit of work against the store and say what was
done (``api.StepResult``). Stages are built with ``Stage(ctx)`` in whatever process runs
them (a Ray actor or a thread of an in-process run); they never import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from unirl_stream.api import MetricSink, NullSink, Prompt, SampleOutcome, SampleStore, StepResult
from unirl_stream.pipeline.control import Control
from unirl_stream.recipe import Recipe


@dataclass
class StageContext:
    recipe: Recipe
    store: SampleStore
    control: Control
    run_dir: Path
    run_id: str
    stage: str  # stage name, e.g. "rollout"
    worker: int = 0
    options: Any = None  # the plugin's decoded Config (plugin stages), else None
    sink: MetricSink = field(default_factory=NullSink)
    device: str | None = None  # explicit device from placement (e.g. "cuda:1")
    resume_from: Path | None = None  # checkpoint folder when resuming

    @property
    def source(self) -> str:
        return f"{self.stage}/{self.worker}"

    @cached_property
    def prompts(self) -> list[Prompt]:
        from unirl_stream.data import load_prompts

        return load_prompts(self.recipe.resolve(self.recipe.data.prompts))

    @cached_property
    def prompts_by_id(self) -> dict[str, Prompt]:
        return {p.id: p for p in self.prompts}


class StageBase:
    """Optional convenience base: keeps ``ctx`` and a few shortcuts. Any class with
    ``__init__(ctx)`` and ``step() -> StepResult`` is a stage."""

    #: Decodes ``[[pipeline.stages]] options`` for plugin stages (a msgspec Struct).
    Config: Any = None

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.recipe = ctx.recipe

    def step(self) -> StepResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release resources when the run ends (override if needed)."""

    def finalize(self, rows: list[SampleOutcome]) -> None:
        """Record how samples ended: the ledger (exactly once, via the coordinator) and,
        for drops, the metrics bus (the monitor's drops-by-reason)."""
        self.ctx.control.finalize(rows)
        for row in rows:
            if row.status == "dropped":
                self.ctx.sink.emit(row)

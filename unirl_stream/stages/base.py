"""What every stage gets, and the one small base class.

A stage is one method, ``step()``: do one unit of work against the store and say what was
done (``api.StepResult``). Stages are built with ``Stage(ctx)`` in whatever process runs
them (a Ray actor or a thread of an in-process run); they never import each other, and all
they know of the run is this context: the store, the control plane and the weight channel
(contracts in ``api.py`` and ``control.py``; the pipeline supplies the implementations).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unirl_stream.api import Prompt, SampleStore, StepResult, TaskSpec
from unirl_stream.control import ControlPlane, WeightChannel
from unirl_stream.events import MetricSink, NullSink, SampleOutcome

if TYPE_CHECKING:  # pragma: no cover
    from unirl_stream.recipe import Recipe


@dataclass
class StageContext:
    recipe: Recipe
    store: SampleStore
    control: ControlPlane
    weights: WeightChannel
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


def declared_tasks(stage_cls: Any, recipe: Recipe) -> list[TaskSpec]:
    """The store tasks a stage class claims from (none if it declares none)."""
    tasks = getattr(stage_cls, "tasks", None)
    return list(tasks(recipe)) if tasks is not None else []


class StageBase:
    """Optional convenience base: keeps ``ctx`` and a few shortcuts. Any class with
    ``__init__(ctx)`` and ``step() -> StepResult`` is a stage."""

    #: Decodes ``[[pipeline.stages]] options`` for plugin stages (a msgspec Struct).
    Config: Any = None

    @classmethod
    def tasks(cls, recipe: Recipe) -> list[TaskSpec]:
        """The store tasks this stage claims from (the driver registers them)."""
        return []

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

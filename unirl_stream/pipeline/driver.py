"""``unirl-stream run``: build the run, start the stages, watch them, close out.

The driver never touches tensors: it owns the run directory's lock, the store's servers,
the coordinator, the metrics aggregator and the stage workers, and its loop only polls
their health (errors, and the stall watchdog).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec

from unirl_stream.api import UnirlError, UserInputError
from unirl_stream.events import StoreTick
from unirl_stream.monitor.report import end_of_run
from unirl_stream.pipeline.launch import Run
from unirl_stream.pipeline.quiet import QuietConsole
from unirl_stream.pipeline.rundir import RunDirLock
from unirl_stream.pipeline.watchdog import StallWatchdog
from unirl_stream.recipe import Recipe, to_toml
from unirl_stream.stages import checkpoint
from unirl_stream.validate import check_recipe, load_checked

SAVED = "recipe.toml"


class RunFailed(UnirlError):
    """A stage failed and the run stopped (CLI exit code 1)."""


def run(recipe: Recipe | None = None, run_dir: Path | None = None, resume: Path | None = None,
        address: str | None = None, live: bool = True, overrides: list[str] | None = None) -> Path:
    """Run a recipe to its last optimizer step; returns the run directory.

    ``resume``: continue the run in that directory with the recipe it saved (``overrides``
    apply to it); a ``recipe`` given as well must equal the saved one. The recipe run is
    validated here, once, before anything starts (weights included)."""
    if resume is not None:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise UserInputError(f"--resume: run directory not found: {run_dir}")
        lock = RunDirLock(run_dir)  # before reading anything: one writer per run directory
    elif recipe is None:
        raise UserInputError("run: give a recipe, or resume a run directory")
    else:
        check_recipe(recipe, recipe.source or "recipe")
        run_dir = Path(run_dir) if run_dir is not None else _new_dir(recipe)
        lock = RunDirLock(run_dir)
    try:
        recipe, ckpt = _reopen(run_dir, recipe, overrides) if resume is not None else _create(run_dir, recipe)
        _watch(recipe, run_dir, ckpt, address, live)
    finally:
        lock.release()
    return run_dir


def _watch(recipe: Recipe, run_dir: Path, ckpt: Path | None, address: str | None, live: bool) -> None:
    watchdog = StallWatchdog(recipe.pipeline.stall_timeout_s)
    with QuietConsole(run_dir), Run(recipe, run_dir, ckpt, address=address, live=live) as r:
        while not r.finished():  # the whole loop: health, metrics, failures, stalls
            stats = r.store.stats()
            r.emit(StoreTick(run_id=r.run_id, source="driver", t=time.time(), stats=stats))
            if errors := r.errors():
                raise RunFailed("; ".join(errors))
            if stall := watchdog.check(r.control, stats):
                raise RunFailed(stall)
            r.watch()
            time.sleep(recipe.pipeline.tick_s / 2)
        if errors := r.errors():
            raise RunFailed("; ".join(errors))
    end_of_run(run_dir)


def _new_dir(recipe: Recipe) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(recipe.run.output_dir) / f"{recipe.run.name}-{stamp}"


def _create(run_dir: Path, recipe: Recipe) -> tuple[Recipe, None]:
    if (run_dir / "ledger.jsonl").exists():
        raise UserInputError(f"--run-dir {run_dir}: already holds a run; use --resume {run_dir} to continue it")
    recipe = saved_form(recipe)
    (run_dir / SAVED).write_text(to_toml(recipe), encoding="utf-8")
    return recipe, None


def _reopen(run_dir: Path, given: Recipe | None, overrides: list[str] | None) -> tuple[Recipe, Path | None]:
    saved = run_dir / SAVED
    if not saved.exists():
        raise UserInputError(f"--resume {run_dir}: not a run directory (no {SAVED})")
    recipe = saved_form(load_checked(saved, overrides)[0])
    if given is not None and (key := first_difference(saved_form(given), recipe)) is not None:
        raise UserInputError(
            f"--resume {run_dir}: the recipe given differs from the run's saved {SAVED} at {key}; "
            f"resume with the saved recipe (leave the recipe out), or change it with --set {key}=...")
    if overrides:  # the next resume continues with what this one ran
        saved.write_text(to_toml(recipe), encoding="utf-8")
    return recipe, checkpoint.latest(run_dir)


def saved_form(recipe: Recipe) -> Recipe:
    """The recipe as a run directory keeps it: the prompt file named absolutely, so
    ``--resume`` finds it from anywhere."""
    data = msgspec.structs.replace(recipe.data, prompts=str(recipe.resolve(recipe.data.prompts).resolve()))
    return msgspec.structs.replace(recipe, data=data)


def first_difference(a: Recipe, b: Recipe) -> str | None:
    """The dotted key of the first value that differs between two recipes, or None."""
    def walk(x: Any, y: Any, path: str) -> str | None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in list(dict.fromkeys([*x, *y])):
                if (hit := walk(x.get(k), y.get(k), f"{path}.{k}" if path else str(k))) is not None:
                    return hit
            return None
        if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                if (hit := walk(u, v, f"{path}.{i}")) is not None:
                    return hit
            return None
        return None if x == y else path

    da, db = msgspec.to_builtins(a), msgspec.to_builtins(b)
    da.pop("source", None)
    db.pop("source", None)
    return walk(da, db, "")


"""``unirl-stream run``: build the run, start the stages, watch them, close out.

The driver never touches tensors: it owns the store's servers, the coordinator, the
metrics aggregator and the stage workers, and its loop only polls their health.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec

from unirl_stream.api import StoreTick, UnirlError, UserInputError
from unirl_stream.pipeline import checkpoint
from unirl_stream.pipeline.launch import Run
from unirl_stream.recipe import Recipe, load, to_toml


class RunFailed(UnirlError):
    """A stage failed and the run stopped (CLI exit code 1)."""


def run(recipe: Recipe, run_dir: Path | None = None, resume: Path | None = None,
        address: str | None = None, live: bool = True) -> Path:
    """Run a recipe to its last optimizer step; returns the run directory."""
    recipe, run_dir, ckpt = prepare(recipe, run_dir, resume)
    with Run(recipe, run_dir, ckpt, address=address, live=live) as r:
        while not r.finished():  # the whole loop: health, metrics, failures
            r.emit(StoreTick(run_id=r.run_id, source="driver", t=time.time(), stats=r.store.stats()))
            if errors := r.errors():
                raise RunFailed("; ".join(errors))
            time.sleep(recipe.pipeline.tick_s / 2)
        if errors := r.errors():
            raise RunFailed("; ".join(errors))
    return run_dir


def prepare(recipe: Recipe, run_dir: Path | None, resume: Path | None) -> tuple[Recipe, Path, Path | None]:
    """Check weights before anything starts; make (or reopen) the run directory."""
    if resume is not None:
        resume = Path(resume)
        saved = resume / "recipe.toml"
        if not saved.exists():
            raise UserInputError(f"--resume {resume}: not a run directory (no recipe.toml)")
        recipe = load(saved, check=True)
        ckpt = checkpoint.latest(resume)
        return recipe, resume, ckpt
    _check_weights(recipe)
    if run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(recipe.run.output_dir) / f"{recipe.run.name}-{stamp}"
    run_dir = Path(run_dir)
    if (run_dir / "ledger.jsonl").exists():
        raise UserInputError(f"--run-dir {run_dir}: already holds a run; use --resume {run_dir} to continue it")
    run_dir.mkdir(parents=True, exist_ok=True)
    # The saved recipe names the prompt file absolutely, so --resume finds it from anywhere.
    data = msgspec.structs.replace(recipe.data, prompts=str(recipe.resolve(recipe.data.prompts).resolve()))
    recipe = msgspec.structs.replace(recipe, data=data)
    (run_dir / "recipe.toml").write_text(to_toml(recipe), encoding="utf-8")
    return recipe, run_dir, None


def _check_weights(recipe: Recipe) -> None:
    from unirl_stream import registry

    check: Any = getattr(registry.load("models", recipe.model.name), "check", None)
    if check is not None:
        try:
            check(recipe)
        except UserInputError as e:
            raise UserInputError(f"{recipe.source}: model.path: {e}") from None

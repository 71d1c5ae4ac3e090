"""Per-sample stage costs: the cost-row contract and its JSONL loader.

A cost row is seconds of one GPU per sample for one stage of one model, at the geometry,
step count and guidance it was measured at. Two line formats are read:

- a flat ``CostRow`` object (``benchmarks/results/costs_h200.jsonl``), and
- a benchmark row (``benchmarks/rows.py`` schema) with metric ``stage_s_per_sample``, as
  ``benchmarks/gpu_wan22.py`` writes them to ``wan22_stage_costs.jsonl``; other metrics of
  such a file are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from unirl_stream.api import UserInputError

STAGES = ("rollout", "decode", "reward", "replay")
"""rollout: the SDE sampler (no decode); decode: the VAE; reward: scoring one sample;
replay: the trainer's proximal pass plus one update over the sample's SDE steps."""
OPTIONAL = ("sync_rollout",)
"""sync_rollout: the sampler run by the trainer's model and adapters (the synchronous loop's
rollout) where it differs from the producers' (e.g. bf16 producer adapters); default: rollout."""

BENCH_METRIC = "stage_s_per_sample"


class CostRow(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One stage's measured (or derived) cost per sample on one GPU."""

    stage: str
    model: str
    """``A14B`` or ``TI2V-5B`` (what ``plan`` infers from the recipe's model.path)."""
    seconds: Annotated[float, Meta(gt=0)]
    low: Annotated[float, Meta(gt=0)] | None = None
    high: Annotated[float, Meta(gt=0)] | None = None
    """A range means the number is not measured at this setting but derived; both ends."""
    source: str
    gpu: str = "H200"
    height: Annotated[int, Meta(ge=1)]
    width: Annotated[int, Meta(ge=1)]
    frames: Annotated[int, Meta(ge=1)]
    steps: Annotated[int, Meta(ge=1)]
    """Denoising steps (rollout) or SDE steps (replay) of the measurement."""
    guidance: Annotated[float, Meta(ge=0)]
    proximal_s: Annotated[float, Meta(ge=0)] = 0.0
    """replay: the part of ``seconds`` that is the no-grad proximal pass (paid once per
    batch; the rest is one update, paid ``updates_per_batch`` times)."""
    memory_gib: Annotated[float, Meta(gt=0)] | None = None
    """Peak GPU memory of one worker of this stage (replay: one unsharded trainer rank)."""
    sharded_gib: Annotated[float, Meta(ge=0)] = 0.0
    """replay: the part of ``memory_gib`` FSDP2 shards over the trainer ranks."""

    @property
    def measured(self) -> bool:
        return self.low is None and self.high is None


def load_costs(path: Path) -> list[CostRow]:
    """Every cost row of a JSONL file; bad input raises one UserInputError line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserInputError(f"{path}: cannot read the costs file ({e.__class__.__name__}); "
                             "pass --costs FILE with a JSONL file of cost rows") from None
    rows = [r for n, line in enumerate(text.splitlines(), 1) if line.strip()
            for r in _parse_line(path, n, line)]
    if not rows:
        raise UserInputError(f"{path}: no cost rows (expected JSONL: one CostRow object, or a benchmark "
                             f"row with metric {BENCH_METRIC!r}, per line)")
    return rows


def _parse_line(path: Path, n: int, line: str) -> list[CostRow]:
    try:
        obj = msgspec.json.decode(line)
    except msgspec.DecodeError as e:
        raise UserInputError(f"{path}:{n}: not a JSON object ({e}); a costs file is JSONL, "
                             "one object per line") from None
    if not isinstance(obj, dict):
        raise UserInputError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
    if "benchmark" in obj and "metric" in obj:
        if obj["metric"] != BENCH_METRIC:
            return []  # a benchmark file's other measurements
        obj = _from_benchmark_row(path, n, obj)
    try:
        row = msgspec.convert(obj, CostRow)
    except msgspec.ValidationError as e:
        raise UserInputError(f"{path}:{n}: {_field_message(str(e))}") from None
    _check_row(path, n, row)
    return [row]


def _field_message(text: str) -> str:
    # msgspec says "Expected `float`, got `str` - at `$.seconds`": lead with the field.
    m = re.search(r" - at `\$\.(\w+)`", text)
    return f"{m.group(1)}: {text[:m.start()]}" if m else text


def _check_row(path: Path, n: int, row: CostRow) -> None:
    if row.stage not in STAGES + OPTIONAL:
        raise UserInputError(f"{path}:{n}: stage: unknown stage {row.stage!r} "
                             f"(known: {', '.join(STAGES + OPTIONAL)})")
    lo, hi = row.low if row.low is not None else row.seconds, row.high if row.high is not None else row.seconds
    if not lo <= row.seconds <= hi:
        raise UserInputError(f"{path}:{n}: low/high: the range [{lo}, {hi}] must contain seconds = {row.seconds}")
    if row.proximal_s >= row.seconds:
        raise UserInputError(f"{path}:{n}: proximal_s: {row.proximal_s} must be below seconds = {row.seconds}")


def _from_benchmark_row(path: Path, n: int, obj: dict[str, Any]) -> dict[str, Any]:
    """A ``gpu_wan22.py`` stage-cost row as a CostRow object (measured, so no range)."""
    c = obj.get("config")
    if not isinstance(c, dict):
        raise UserInputError(f"{path}:{n}: config: a benchmark row needs a config object")
    try:
        height, width, frames = (int(x) for x in str(c["geometry"]).split("x"))
        stage = str(c["stage"])
        out = {"stage": stage, "model": model_family(str(c["model"])) or str(c["model"]),
               "seconds": obj["value"], "gpu": str(c.get("gpu", "")), "height": height, "width": width,
               "frames": frames, "guidance": c["guidance"],
               "steps": c["sde_steps"] if stage == "replay" else c["steps"],
               "source": f"{path.name}:{n} ({c.get('note', stage)}; commit {obj.get('git_commit', '?')}, "
                         f"{c.get('measured_blocks', '?')} of {c.get('full_blocks', '?')} blocks measured, "
                         f"compile {c.get('compile', '?')})"}
    except (KeyError, ValueError) as e:
        raise UserInputError(f"{path}:{n}: config: benchmark row lacks or garbles {e}") from None
    if stage == "replay":
        out["proximal_s"] = c.get("proximal_s", 0.0)
    return out


def model_family(name: str) -> str | None:
    """``A14B`` / ``TI2V-5B`` from a model path or name (None: neither)."""
    low = name.lower()
    if "a14b" in low:
        return "A14B"
    if "ti2v" in low or "5b" in low:
        return "TI2V-5B"
    return None


def pick(rows: list[CostRow], model: str, path: Path) -> dict[str, CostRow]:
    """The row per stage for ``model``: the last one in the file wins (newer measurements
    are appended). Every stage must be present."""
    chosen = {r.stage: r for r in rows if r.model == model}
    missing = [s for s in STAGES if s not in chosen]
    if missing:
        have = sorted({r.model for r in rows})
        raise UserInputError(f"{path}: no cost row for model {model!r}, stage(s) {', '.join(missing)} "
                             f"(models in the file: {', '.join(have)}); add the rows or pass --model")
    return chosen

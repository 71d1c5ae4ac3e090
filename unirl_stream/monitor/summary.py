"""What a run did, read back from its run directory: the summary block a run ends with,
and the numbers ``unirl-stream report`` shows.

Works on a running run (a snapshot of the files), a finished one and a crashed one:
unreadable lines are skipped and counted (``RunRecord.skipped``), never raised.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unirl_stream.api import UserInputError
from unirl_stream.monitor.aggregator import METRICS_FILE, MONITOR_FILE
from unirl_stream.monitor.history import History, read_history

REPORT_FILE = "report.html"
MEDIA_INDEX = "media/index.jsonl"


@dataclass
class RunRecord:
    run_dir: Path
    recipe_text: str
    recipe: dict[str, Any]
    history: History
    ledger: list[dict[str, Any]]
    media: list[dict[str, Any]]  # media/index.jsonl rows whose files still exist
    state: str  # "finished", "running" or "stopped" (the driver died before closing)
    skipped: list[str] = field(default_factory=list)

    @property
    def trained(self) -> list[dict[str, Any]]:
        return [r for r in self.ledger if r.get("status") == "trained"]

    def drops(self) -> dict[str, int]:
        """Dropped samples by reason (the reason's first word, e.g. ``stale``)."""
        out: dict[str, int] = {}
        for r in self.ledger:
            if r.get("status") == "dropped":
                key = str(r.get("reason", "")).split(":")[0] or "unknown"
                out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _jsonl(path: Path, skipped: list[str]) -> list[dict[str, Any]]:
    rows, bad = [], 0
    if not path.is_file():
        return rows
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    if bad:
        skipped.append(f"{path.name}: {bad} unreadable line(s) skipped")
    return rows


def load_run(run_dir: str | Path) -> RunRecord:
    """Read a run directory; a folder that is not one is a UserInputError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserInputError(f"{run_dir}: no such directory; give a run directory "
                             "(the folder `unirl-stream run` made, e.g. runs/quickstart-<time>)")
    if not (run_dir / "recipe.toml").is_file() and not (run_dir / METRICS_FILE).is_file():
        raise UserInputError(f"{run_dir}: not a run directory (no recipe.toml, no {METRICS_FILE}); "
                             "give the folder `unirl-stream run` made, e.g. runs/quickstart-<time>")
    skipped: list[str] = []
    recipe_text, recipe = "", {}
    try:
        recipe_text = (run_dir / "recipe.toml").read_text(encoding="utf-8")
        recipe = tomllib.loads(recipe_text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        skipped.append(f"recipe.toml: unreadable ({type(e).__name__}); recipe not shown")
    try:
        history = read_history(run_dir)
    except UserInputError:
        history = History()
        skipped.append(f"{METRICS_FILE}: missing; no curves")
    if history.bad_lines:
        skipped.append(f"{METRICS_FILE}: {history.bad_lines} unreadable line(s) skipped")
    media = _jsonl(run_dir / MEDIA_INDEX, skipped)
    kept = [m for m in media if (run_dir / str(m.get("poster", ""))).is_file()]
    if len(kept) < len(media):
        skipped.append(f"media: {len(media) - len(kept)} sample(s) thinned away (logging.media_max_mb)")
    return RunRecord(run_dir, recipe_text, recipe, history, _jsonl(run_dir / "ledger.jsonl", skipped),
                     kept, _state(run_dir, history), skipped)


def _state(run_dir: Path, history: History) -> str:
    if history.last is not None and history.last.finished:
        return "finished"
    try:
        info = json.loads((run_dir / MONITOR_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "stopped"
    return "running" if info.get("state") == "running" and _alive(info.get("pid")) else "stopped"


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def quarters(values: list[float]) -> tuple[float, float] | None:
    """Mean of the first and of the last quarter (None with fewer than 4 values)."""
    if len(values) < 4:
        return None
    q = len(values) // 4
    return sum(values[:q]) / q, sum(values[-q:]) / q


def facts(rec: RunRecord) -> dict[str, str]:
    """The summary as label -> text, in order (the console block and the report's table)."""
    snap, trained = rec.history.last, rec.trained
    eta = snap.staleness.eta if snap else rec.recipe.get("pipeline", {}).get("max_staleness", "?")
    steps = int(rec.history.train[-1].get("step", 0)) if rec.history.train else 0
    duration = snap.uptime_s if snap else 0.0
    drops = rec.drops()
    dropped = sum(drops.values())
    rewards = [float(r["reward"]) for r in sorted(trained, key=lambda r: r.get("t", 0.0))
               if r.get("reward") is not None]
    q = quarters(rewards)
    out = {
        "state": rec.state,
        "duration": f"{int(duration // 60)}m {duration % 60:04.1f}s, {steps} optimizer steps",
        "samples": f"{len(trained)} trained, {dropped} dropped"
                   + (" (" + ", ".join(f"{k} {v}" for k, v in drops.items()) + ")" if drops else ""),
        "reward": (f"{q[0]:.4g} -> {q[1]:.4g} (first -> last quarter of trained samples, "
                   f"{q[1] - q[0]:+.3g})") if q else "too few trained samples",
        "staleness": f"max {max((int(r.get('staleness', 0)) for r in trained), default=0)} (eta {eta})",
    }
    ckpts = sorted((rec.run_dir / "checkpoints").glob("step_*/weights.safetensors"))
    out["LoRA weights"] = str(ckpts[-1]) if ckpts else "none written (no checkpoint yet)"
    versions = sorted({int(m.get("version", 0)) for m in rec.media})
    lost = media_dropped(rec.run_dir)
    out["media"] = (f"{rec.run_dir / 'media'} ({len(rec.media)} samples, {len(versions)} versions"
                    + (f"; {lost} dropped: disk too slow or media_max_mb too small)" if lost else ")")
                    if rec.media else "none written (logging.media_every = 0, or no version yet)")
    return out


def media_dropped(run_dir: Path) -> int:
    """Samples the reward workers' media writers dropped (their ``logs/media-*.json``)."""
    total = 0
    for path in (run_dir / "logs").glob("media-*.json"):
        try:
            total += int(json.loads(path.read_text(encoding="utf-8")).get("media/dropped", 0))
        except (OSError, ValueError, AttributeError):
            continue
    return total


def summary_block(run_dir: Path, report: Path | None, report_error: str = "") -> str:
    """The lines a run ends with."""
    rec = load_run(run_dir)
    rows = facts(rec)
    rows["report"] = str(report) if report else f"not written ({report_error})"
    rows["open it"] = f"unirl-stream report {run_dir} --open"
    width = max(len(k) for k in rows)
    title = f"run {rec.state}: {run_dir}"
    lines = [f"== {title} " + "=" * max(0, 60 - len(title))]
    lines += [f"  {k:<{width}}  {v}" for k, v in rows.items() if k != "state"]
    lines += [f"  note: {s}" for s in rec.skipped]
    return "\n".join(lines) + "\n"

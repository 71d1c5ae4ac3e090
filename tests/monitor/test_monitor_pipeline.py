"""The real in-process pipeline (synthetic policy, memory store, threads) feeding the
driver's ``Monitoring`` (wrapped only to capture its console): a quickstart-style run fills
every panel field from real events."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

from rich.console import Console

from unirl_stream.monitor.panel import render
from unirl_stream.monitor.setup import Monitoring
from unirl_stream.monitor.snapshot import snapshot_from_row
from unirl_stream.pipeline import driver, launch
from unirl_stream.recipe import decode

NUM = r"-?\d+(?:\.\d+)?"
STEPS, ETA = 8, 1


def synthetic_recipe(tmp_path: Path) -> Any:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"prompt number {i}" for i in range(8)) + "\n")
    return decode({
        "run": {"name": "mon", "seed": 1, "total_steps": STEPS, "output_dir": str(tmp_path)},
        "model": {"name": "synthetic", "path": "synthetic", "options": {"dim": 8, "steps": 3}},
        "data": {"prompts": str(prompts)},
        "sampling": {"samples_per_prompt": 4},
        "algorithm": {"lr": 0.05, "clip_range": 0.2, "updates_per_batch": 2},
        "reward": [{"name": "synthetic"}],
        "store": {"backend": "memory", "lease_s": 5.0},
        "pipeline": {"backend": "local", "max_staleness": ETA, "rollout_workers": 2,
                     "reward_workers": 1, "groups_per_step": 2, "reward_batch": 8,
                     "tick_s": 0.2},
        "logging": {"live": False, "log_every_s": 0.5, "prometheus_port": 0},
    }, "monitor-test-recipe")


def test_real_pipeline_feeds_the_monitor(tmp_path, monkeypatch) -> None:
    out = io.StringIO()
    console = Console(file=out, width=200)  # not a terminal: plain log lines
    handles: list[Monitoring] = []

    class Hub(Monitoring):
        @classmethod
        def start(cls, run_dir, recipe, run_id, live=True, **kw):  # type: ignore[override]
            handles.append(Monitoring.start(run_dir, recipe, run_id, live=live, console=console))
            return handles[-1]

    monkeypatch.setattr(launch, "Monitoring", Hub)
    run_dir = driver.run(synthetic_recipe(tmp_path), run_dir=tmp_path / "run", live=False)
    assert handles, "the driver did not start the monitor through Monitoring.start"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    assert all(r["staleness_max"] <= ETA for r in train)
    final = snapshot_from_row([r for r in rows if r["kind"] == "pipeline"][-1])
    assert final.finished and final.learning.step == STEPS
    assert final.learning.samples == sum(r["samples"] for r in train)
    assert final.staleness.policy_version == train[-1]["policy_version"]
    assert final.staleness.count == final.learning.samples
    assert sum(final.staleness.histogram[: ETA + 1]) == final.staleness.count
    assert final.staleness.histogram[ETA + 1] == 0  # the bound held
    for name in ("rollout", "reward", "trainer"):
        st = final.stage(name)
        assert st is not None and st.processed > 0 and st.workers_expected > 0
    assert set(final.staleness.producer_versions) == {"rollout/0", "rollout/1"}
    assert final.store.budget_bytes > 0 and final.bus.decode_errors == 0
    text = Console(record=True, width=160, file=io.StringIO())
    text.print(render(final))
    panel = text.export_text()
    for pat in (rf"rollout\s+\d+/2\s+{NUM}\s+\d+\s+(\d+|n/a)\s+\d+%\s+\d+",
                rf"policy version {NUM} · mean {NUM} · max {NUM}",
                rf"reward {NUM} ± {NUM}", rf"terms synthetic {NUM}", rf"loss {NUM} · clip frac {NUM} · approx kl {NUM}",
                rf"used {NUM} \w?B / {NUM} \w?B", rf"put / get {NUM} / {NUM} MB/s"):
        assert re.search(pat, panel), f"{pat!r} not in\n{panel}"
    assert f"[{run_dir.name}" in out.getvalue()  # the --no-live log lines were printed

"""Runs one stage worker: call ``step()`` until done or stopped; report ticks and spans.

The same loop runs in a thread (in-process runs, ``pipeline.backend = "local"``) or inside
a Ray actor (``StageActor``). Its counters go through a ``StageMeter`` (one ``StageTick``
per ``pipeline.tick_s``); busy spans (steps that processed something) go to
``RUN_DIR/spans/<stage>-<worker>.jsonl`` so overlap between stages can be checked from the
record rather than inferred from sleeps.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

from unirl_stream.api import StepResult
from unirl_stream.monitor.bus import StageMeter
from unirl_stream.pipeline.control import ControlClient
from unirl_stream.stages.base import StageContext, declared_tasks

IDLE_SLEEP_S = (0.002, 0.05)  # idle back-off: first and longest sleep
HEARTBEAT_S = 0.1  # one control round trip per 100 ms at most


def build_stage(name: str, ctx: StageContext) -> Any:
    from unirl_stream import registry

    return registry.load("stages", name)(ctx)


class StageLoop:
    """``wait_for_batch``: sync mode's barrier for the stages after rollout (the coordinator
    says when the version's whole batch is in the store; until then the stage idles)."""

    def __init__(self, name: str, ctx: StageContext, wait_for_batch: bool = False) -> None:
        self.name, self.ctx, self.wait_for_batch = name, ctx, wait_for_batch
        self.stage = build_stage(name, ctx)
        spans = Path(ctx.run_dir) / "spans"
        spans.mkdir(parents=True, exist_ok=True)
        self._spans = open(spans / f"{ctx.stage}-{ctx.worker}.jsonl", "a", buffering=1, encoding="utf-8")

    def _may_step(self) -> bool:
        control: ControlClient = self.ctx.control  # type: ignore[assignment]
        return not self.wait_for_batch or control.batch_sealed()

    def run(self) -> dict[str, Any]:
        """Loop until the stage is done or the run stops; returns totals."""
        ctx = self.ctx
        queue = next(iter(declared_tasks(type(self.stage), ctx.recipe)), None)
        meter = StageMeter(ctx.sink, ctx.run_id, ctx.stage, ctx.worker, ctx.recipe.pipeline.tick_s,
                           task=queue.name if queue else "")
        processed = steps = 0
        sleep = IDLE_SLEEP_S[0]
        last_beat, host = time.time(), socket.gethostname()
        try:
            while True:
                t0 = time.time()
                res = self.stage.step() if self._may_step() else StepResult()
                steps += 1
                if res.processed:
                    processed += res.processed
                    self._spans.write(json.dumps({"stage": ctx.stage, "worker": ctx.worker, "t0": t0,
                                                  "t1": time.time(), "n": res.processed}) + "\n")
                    sleep = IDLE_SLEEP_S[0]
                else:
                    time.sleep(sleep)
                    sleep = min(sleep * 2, IDLE_SLEEP_S[1])
                meter.record(res.processed, res.dropped, res.policy_version, res.metrics)
                if res.done:
                    break
                if time.time() - last_beat >= HEARTBEAT_S:
                    last_beat = time.time()
                    if ctx.control.heartbeat(ctx.source, processed, os.getpid(), host):
                        break  # the run is stopping
        except Exception as e:
            ctx.control.fail(f"{ctx.source}: {type(e).__name__}: {e}")
            raise
        finally:
            meter.close()
            self._spans.close()
            close = getattr(self.stage, "close", None)
            if close is not None:
                close()
        return {"stage": ctx.stage, "worker": ctx.worker, "processed": processed, "steps": steps}


class StageActor:
    """Ray actor body (wrapped with ``ray.remote`` by the driver). Ray restarts it after a
    crash (``max_restarts``) and re-runs ``run`` (``max_task_retries``); the stage is rebuilt
    from its context, and samples it had claimed come back when their lease expires."""

    def __init__(self, name: str, ctx: StageContext, sink_factory: Any = None,
                 wait_for_batch: bool = False) -> None:
        if sink_factory is not None:
            ctx.sink = sink_factory(ctx.source)
        self.loop = StageLoop(name, ctx, wait_for_batch)

    def run(self) -> dict[str, Any]:
        return self.loop.run()


def format_error(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(e), e)).strip()

"""Runs one stage worker: call ``step()`` until done or stopped; report ticks and spans.

The same loop runs in a thread (in-process runs, ``pipeline.backend = "local"``) or inside
a Ray actor (``StageActor``). Busy spans (steps that processed something) go to
``RUN_DIR/spans/<stage>-<worker>.jsonl`` so overlap between stages can be checked from
the record rather than inferred from sleeps.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

from unirl_stream.api import StageTick
from unirl_stream.stages.base import StageContext

IDLE_SLEEP_S = (0.002, 0.05)  # idle back-off: first and longest sleep


def build_stage(name: str, ctx: StageContext) -> Any:
    from unirl_stream import registry

    return registry.load("stages", name)(ctx)


class StageLoop:
    def __init__(self, name: str, ctx: StageContext) -> None:
        self.name, self.ctx = name, ctx
        self.stage = build_stage(name, ctx)
        spans = Path(ctx.run_dir) / "spans"
        spans.mkdir(parents=True, exist_ok=True)
        self._spans = open(spans / f"{ctx.stage}-{ctx.worker}.jsonl", "a", buffering=1, encoding="utf-8")

    def run(self) -> dict[str, Any]:
        """Loop until the stage is done or the run stops; returns totals."""
        ctl, tick_s = self.ctx.control, self.ctx.recipe.pipeline.tick_s
        processed = dropped = steps = 0
        busy = idle = 0.0
        last_tick = last_check = time.time()
        tick = {"processed": 0, "dropped": 0, "busy": 0.0, "idle": 0.0}
        sleep = IDLE_SLEEP_S[0]
        values: dict[str, float] = {}
        stopping = False
        host = socket.gethostname()
        try:
            while True:
                t0 = time.time()
                res = self.stage.step()
                t1 = time.time()
                steps += 1
                processed += res.processed
                dropped += res.dropped
                values.update(res.metrics)
                if res.processed:
                    busy += t1 - t0
                    tick["busy"] += t1 - t0
                    self._spans.write(json.dumps({"stage": self.ctx.stage, "worker": self.ctx.worker,
                                                  "t0": t0, "t1": t1, "n": res.processed}) + "\n")
                    sleep = IDLE_SLEEP_S[0]
                else:
                    time.sleep(sleep)
                    sleep = min(sleep * 2, IDLE_SLEEP_S[1])
                    idle += time.time() - t0
                    tick["idle"] += time.time() - t0
                tick["processed"] += res.processed
                tick["dropped"] += res.dropped
                now = time.time()
                if now - last_tick >= tick_s:
                    self._tick(tick, values, now - last_tick)
                    tick = {"processed": 0, "dropped": 0, "busy": 0.0, "idle": 0.0}
                    last_tick = now
                if res.done:
                    break
                if now - last_check >= 0.1:  # one control round trip per 100 ms at most
                    stopping = ctl.heartbeat(self.ctx.source, processed, os.getpid(), host)
                    last_check = now
                    if stopping:
                        break
        except Exception as e:
            ctl.fail(f"{self.ctx.source}: {type(e).__name__}: {e}")
            raise
        finally:
            self._tick(tick, values, time.time() - last_tick)
            self._spans.close()
            close = getattr(self.stage, "close", None)
            if close is not None:
                close()
        return {"stage": self.ctx.stage, "worker": self.ctx.worker, "processed": processed,
                "dropped": dropped, "steps": steps, "busy_s": busy, "idle_s": idle}

    def _tick(self, tick: dict[str, Any], values: dict[str, float], dt: float) -> None:
        self.ctx.sink.emit(StageTick(
            run_id=self.ctx.run_id, source=self.ctx.source, t=time.time(), stage=self.ctx.stage,
            worker=self.ctx.worker, processed=tick["processed"], dropped=tick["dropped"],
            busy_s=tick["busy"], idle_s=tick["idle"],
            policy_version=int(values.get("policy_version", -1)), values=dict(values)))


class StageActor:
    """Ray actor body (wrapped with ``ray.remote`` by the driver). Ray restarts it after a
    crash (``max_restarts``) and re-runs ``run`` (``max_task_retries``); the stage is rebuilt
    from its context, and samples it had claimed come back when their lease expires."""

    def __init__(self, name: str, ctx: StageContext, sink_factory: Any = None) -> None:
        if sink_factory is not None:
            ctx.sink = sink_factory(ctx.source)
        self.loop = StageLoop(name, ctx)

    def run(self) -> dict[str, Any]:
        return self.loop.run()


def format_error(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(e), e)).strip()

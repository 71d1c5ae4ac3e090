"""Bring a run up and down: store, coordinator, metrics, stage workers (threads or Ray)."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from unirl_stream.events import MetricEvent
from unirl_stream.monitor.setup import Monitoring
from unirl_stream.pipeline import quiet
from unirl_stream.pipeline.control import ControlClient, CoordinatorWeights
from unirl_stream.pipeline.coordinator import Coordinator, ResumePoint
from unirl_stream.pipeline.placement import check_fits, trainer_group
from unirl_stream.pipeline.reaper import Reaper
from unirl_stream.pipeline.runner import StageActor, StageLoop, format_error
from unirl_stream.recipe import Recipe
from unirl_stream.stages import checkpoint
from unirl_stream.stages.base import StageContext, declared_tasks

SETTLE_S = 5.0  # how long a failed trainer group's other ranks may take to report


class Run:
    def __init__(self, recipe: Recipe, run_dir: Path, ckpt: Path | None,
                 address: str | None = None, live: bool = True) -> None:
        self.recipe, self.run_dir, self.ckpt = recipe, Path(run_dir), ckpt
        self.address, self.live = address, live
        self.run_id = self.run_dir.name
        self.use_ray = recipe.pipeline.backend == "ray"
        self._started_ray = False
        self._workers: list[tuple[str, Any]] = []  # (source, thread or ObjectRef)
        self._thread_errors: list[str] = []
        self._trainers: list[tuple[str, Any]] = []  # (source, thread or ObjectRef) per rank
        self._settled = False
        self.actors: dict[str, Any] = {}  # Ray actor handles by source ("rollout/0", ...)
        self._reaper: Reaper | None = None
        self._host = socket.gethostname()

    # ------------------------------------------------------------------ up
    def __enter__(self) -> Run:
        from unirl_stream.storage import open_store

        try:
            # First of all: whatever starts from here on ends with the run, even if the
            # driver is SIGKILLed (pipeline/reaper.py).
            self._reaper = Reaper()
            if self.use_ray:
                self._init_ray()
            self.store = open_store(self.recipe.store, use_ray=self.use_ray)
            self.plan = self._plan()  # decoded once: tasks and workers both read it
            self._register_tasks()
            self.control = ControlClient(self._coordinator())
            self.metrics = Monitoring.start(self.run_dir, self.recipe, self.run_id,
                                           live=self.live and self.recipe.logging.live)
            self.control.close_out("interrupted: the run stopped before this sample was trained")
            self._start_workers()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _init_ray(self) -> None:
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING",
                                      **quiet.ray_options(self.run_dir)}
            if self.address:
                kwargs["address"] = self.address
            else:  # "local": a cluster of our own, even if `ray start` left one to join
                kwargs |= {"address": "local", "num_cpus": max(os.cpu_count() or 2, 2)}
            ray.init(**kwargs)
            self._started_ray = True
            node = getattr(ray._private.worker, "_global_node", None)  # no public API for it
            if not self.address and node is not None and self._reaper is not None:
                self._reaper.tell(session=node.get_session_dir_path())
        check_fits(self.recipe.pipeline, ray.cluster_resources(), self.recipe.source or "recipe")

    def _register_tasks(self) -> None:
        """Register the store tasks every stage of the run declares (``Stage.tasks``), before
        any stage starts, so no write can precede its consumer's queue."""
        from unirl_stream import registry

        for name, *_ in self.plan:
            for spec in declared_tasks(registry.load("stages", name), self.recipe):
                self.store.register_task(spec.name, list(spec.requires), spec.by_group)

    def _plan(self) -> list[tuple[str, int, Any, Any, bool]]:
        """(stage plugin name, workers, placement, decoded options, restartable) per stage."""
        from unirl_stream import registry

        p = self.recipe.pipeline
        plan: list[tuple[str, int, Any, Any, bool]] = [
            ("rollout", p.rollout_workers, p.rollout, None, True),
            ("reward", p.reward_workers, p.reward, None, True),
            ("trainer", p.trainer_workers, p.trainer, None, False),
        ]
        for spec in p.stages:
            options = registry.decode_options(registry.load("stages", spec.name), spec.options,
                                              f"pipeline.stages[{spec.name}].options")
            plan.append((spec.name, spec.workers, spec.placement, options, True))
        return plan

    def _coordinator(self) -> Any:
        from unirl_stream.data import load_prompts

        r, p = self.recipe, self.recipe.pipeline
        resume = ResumePoint(*checkpoint.read_state(self.ckpt)) if self.ckpt else None
        args = (str(self.run_dir), [x.id for x in load_prompts(r.resolve(r.data.prompts))], r.run.seed,
                r.data.shuffle, r.sampling.samples_per_prompt, p.groups_per_step, p.publish_every,
                p.max_staleness, p.mode, resume)
        if not self.use_ray:
            return Coordinator(*args)
        import ray

        return ray.remote(Coordinator).options(num_cpus=0, max_concurrency=64).remote(*args)

    def _contexts(self) -> list[tuple[str, StageContext, Any, bool]]:
        """(plugin name, context, placement, restartable) for every worker."""
        weights = CoordinatorWeights(self.control)
        out = []
        for name, n, placement, options, restartable in self.plan:
            for w in range(n):
                device = f"cuda:{placement.gpu_ids[w % len(placement.gpu_ids)]}" if placement.gpu_ids else None
                ctx = StageContext(recipe=self.recipe, store=self.store, control=self.control,
                                   weights=weights, run_dir=self.run_dir, run_id=self.run_id, stage=name, worker=w,
                                   options=options, device=device,
                                   resume_from=self.ckpt if name == "trainer" else None)
                out.append((name, ctx, placement, restartable))
        return out

    def _start_workers(self) -> None:
        p = self.recipe.pipeline
        ranks = trainer_group(p.trainer_workers, p.trainer) if self.use_ray and p.trainer_workers > 1 else []
        for name, ctx, placement, restartable in self._contexts():
            # Sync mode: the stages after rollout wait for each version's whole batch.
            wait = p.mode == "sync" and name not in ("rollout", "trainer")
            if self.use_ray:
                extra = ranks[ctx.worker] if name == "trainer" and ranks else {}
                ref = self._actor(name, ctx, placement, restartable, extra, wait)
            else:
                ctx.sink = self.metrics.local_sink()
                # Built here, one after another: lazy imports (diffusers) are not thread-safe.
                loop = StageLoop(name, ctx, wait)
                ref = threading.Thread(target=self._thread, args=(loop,), name=ctx.source, daemon=True)
                ref.start()
            self._workers.append((ctx.source, ref))
            if name == "trainer":
                self._trainers.append((ctx.source, ref))

    def _actor(self, name: str, ctx: StageContext, placement: Any, restartable: bool,
               extra: dict[str, Any], wait_for_batch: bool) -> Any:
        import ray

        retries = self.recipe.pipeline.max_restarts if restartable else 0
        options = {"num_cpus": placement.num_cpus, "num_gpus": placement.num_gpus} | extra
        cls = ray.remote(StageActor).options(
            **options, resources=placement.resources or None, max_restarts=retries,
            max_task_retries=retries, name=f"{self.run_id}:{ctx.source}")
        actor = cls.remote(name, ctx, self.metrics.sink_factory(), wait_for_batch)
        self.actors[ctx.source] = actor
        return actor.run.remote()

    def _thread(self, loop: StageLoop) -> None:
        try:
            loop.run()
        except BaseException as e:  # reported through errors(); the loop already told control
            self._thread_errors.append(f"{loop.ctx.source}: {format_error(e)}")
            self.control.fail(f"{loop.ctx.source}: {format_error(e)}")

    # ------------------------------------------------------------------ watch
    def finished(self) -> bool:
        """Rank 0 of the trainer is done, or any rank ended with an error, or a stage failed."""
        if self.use_ray:
            import ray

            refs = [ref for _, ref in self._trainers]
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            failed = [self._collect(src, ref) for src, ref in self._trainers if ref in done]
            return refs[0] in done or any(failed) or bool(self.control.errors())
        return not self._trainers[0][1].is_alive() or bool(self.control.errors())

    def _collect(self, source: str, ref: Any) -> bool:
        """True if that trainer rank died or raised: that ends the run, naming the rank."""
        import ray

        try:
            ray.get(ref)
            return False
        except Exception as e:
            msg = f"{source}: {format_error(e)}"
            if msg not in self._thread_errors:
                # A rank whose process died caused the others' collective errors: name it first.
                at = 0 if isinstance(e, ray.exceptions.ActorDiedError) else len(self._thread_errors)
                self._thread_errors.insert(at, msg)
            return True

    def watch(self) -> None:
        """Tell the reaper the stage workers' processes on this host: on a cluster joined
        with ``--address`` they are not the driver's descendants."""
        if self._reaper is not None and self.use_ray:
            self._reaper.tell(pids=[w.pid for w in self.control.workers().values() if w.host == self._host])

    def errors(self) -> list[str]:
        """Failures so far; a trainer rank whose process died comes first."""
        errors = self._thread_errors + self.control.errors()
        if errors and self.use_ray and len(self._trainers) > 1 and not self._settled:
            self._settle()
            errors = self._thread_errors + self.control.errors()
        return list(dict.fromkeys(errors))

    def _settle(self) -> None:
        """A dead rank's peers fail in their collectives a moment before Ray reports the
        death: give the other ranks a few seconds to end, so the error names the cause."""
        import ray

        self._settled = True
        refs = [ref for _, ref in self._trainers]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=SETTLE_S)
        for src, ref in self._trainers:
            if ref in done:
                self._collect(src, ref)

    def emit(self, event: MetricEvent) -> None:
        self.metrics.emit(event)

    # ------------------------------------------------------------------ down
    def __exit__(self, *exc: Any) -> None:
        control = getattr(self, "control", None)
        if control is not None:
            control.stop()
            self._join_workers(timeout=30.0)
            control.close_out("run_ended: the run finished before this sample was trained")
            control.close()
        if hasattr(self, "metrics"):
            self.metrics.close()
        store = getattr(self, "store", None)
        if store is not None:
            getattr(store, "shutdown", store.close)()
        if self._started_ray:
            import ray

            ray.shutdown()
        if self._reaper is not None:
            self._reaper.done()

    def _join_workers(self, timeout: float) -> None:
        deadline = time.time() + timeout
        if self.use_ray:
            import ray

            refs = [ref for _, ref in self._workers]
            ray.wait(refs, num_returns=len(refs), timeout=max(0.0, deadline - time.time()))
            for ref in refs:
                try:
                    ray.get(ref, timeout=0)
                except Exception:  # noqa: BLE001 - errors were reported through control
                    pass
            return
        for _, thread in self._workers:
            thread.join(max(0.0, deadline - time.time()))

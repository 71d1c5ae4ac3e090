"""Where stage workers go on a Ray cluster: a fit check before anything starts, and the
trainer group's placement group (its ranks packed on one node where they fit)."""

from __future__ import annotations

from typing import Any

from unirl_stream.api import UserInputError
from unirl_stream.stages.config import PipelineConfig, Placement

TRAINER_GROUP_READY_S = 60.0


def stage_placements(p: PipelineConfig) -> list[tuple[str, int, Placement]]:
    return [("rollout", p.rollout_workers, p.rollout), ("reward", p.reward_workers, p.reward),
            ("trainer", p.trainer_workers, p.trainer),
            *[(f"stages[{i}]", s.workers, s.placement) for i, s in enumerate(p.stages)]]


def _asks(placement: Placement) -> dict[str, float]:
    asks = {"CPU": placement.num_cpus, "GPU": placement.num_gpus, **placement.resources}
    return {k: v for k, v in asks.items() if v > 0}


def check_fits(p: PipelineConfig, cluster: dict[str, float], where: str) -> None:
    """Fail before any actor starts when a stage (or all of them together) asks for more of
    a resource than the cluster has: otherwise its actors would wait forever."""
    total: dict[str, float] = {}
    for stage, workers, placement in stage_placements(p):
        for res, per in _asks(placement).items():
            need = workers * per
            total[res] = total.get(res, 0.0) + need
            if need > cluster.get(res, 0.0) + 1e-9:
                raise UserInputError(
                    f"{where}: pipeline.{stage}: {workers} workers x {per:g} {res} = {need:g} {res}, "
                    f"but the Ray cluster has {cluster.get(res, 0.0):g} {res}; use fewer workers or "
                    "smaller fractions, or join a larger cluster with --address")
    for res, need in total.items():
        if need > cluster.get(res, 0.0) + 1e-9:
            asked = ", ".join(f"{s} {w} x {_asks(pl).get(res, 0):g}" for s, w, pl in stage_placements(p)
                              if _asks(pl).get(res))
            raise UserInputError(
                f"{where}: pipeline: the stages ask for {need:g} {res} together ({asked}), but the "
                f"Ray cluster has {cluster.get(res, 0.0):g} {res}")


def trainer_group(workers: int, placement: Placement) -> list[dict[str, Any]]:
    """Ray actor options per trainer rank: one bundle per rank in a PACK placement group
    (one node where the ranks fit, spread over nodes otherwise)."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    # A bundle must ask for something; a CPU-only rank asks for a sliver of a CPU.
    bundle = {"CPU": max(placement.num_cpus, 0.01), **_asks(placement)} | (
        {"CPU": placement.num_cpus} if placement.num_cpus > 0 else {})
    pg = placement_group([dict(bundle) for _ in range(workers)], strategy="PACK")
    ready, _ = ray.wait([pg.ready()], timeout=TRAINER_GROUP_READY_S)
    if not ready:
        ray.util.remove_placement_group(pg)
        raise UserInputError(
            f"pipeline.trainer: a placement group of {workers} ranks x {bundle} was not placed in "
            f"{TRAINER_GROUP_READY_S:.0f} s; the cluster has {ray.available_resources()}")
    return [{"num_cpus": bundle["CPU"], "num_gpus": placement.num_gpus,
             "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=r)}
            for r in range(workers)]

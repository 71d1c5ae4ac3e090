"""``unirl-stream plan``: the recipe, the cost rows and the model, put together as a Plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import msgspec

from unirl_stream.api import UserInputError
from unirl_stream.planning import model as cm
from unirl_stream.planning.costs import OPTIONAL, STAGES, CostRow, load_costs, model_family, pick

DEFAULT_COSTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "costs_h200.jsonl"
DP_EFFICIENCY = (0.9, 0.8, 0.97)
"""Assumed (value, low, high): no multi-GPU trainer has been measured on a GPU yet."""
DP_SOURCE = ("assumed, not measured: LoRA-gradient all-reduce (0.84 GB for A14B r64) and FSDP2 "
             "all-gathers over NVLink against minutes of compute per step")

MEMORY: dict[str, dict[str, tuple[float, float, float, str]]] = {
    "A14B": {
        "rollout": (70.0, 67.0, 74.0, "derived: 56 GiB measured peak of both experts + a 33-frame CFG-pair step "
                                      "(H100, FACTS.md) + 10.6 UMT5 + 3.1 fp32 r64 adapters"),
        "reward": (4.0, 2.0, 6.0, "derived: CLIP-H PickScore (~1 B params bf16) + activations"),
        "trainer": (85.0, 78.0, 92.0, "derived: 53.4 experts + 10.6 UMT5 + 12.5 fp32 LoRA master/grad/AdamW "
                                      "(0.84 B x 16 B) + ~8 checkpointed activations (no A14B replay was measured)"),
        "trainer_sharded": (65.9, 65.9, 65.9, "experts 53.4 (measured) + LoRA state 12.5: the part FSDP2 "
                                              "shards"),
    },
    "TI2V-5B": {
        "rollout": (26.9, 26.9, 26.9, "derived: 16.3 GiB measured decode peak with the model resident (H200, "
                                      "gpu_wan22.jsonl) + 10.6 UMT5 (the benchmark used a 2-layer encoder)"),
        "reward": (4.0, 2.0, 6.0, "derived: CLIP-H PickScore (~1 B params bf16) + activations"),
        "trainer": (39.5, 39.5, 39.5, "derived: 28.9 GiB measured replay peak (H200, gpu_wan22.jsonl) + 10.6 UMT5"),
        "trainer_sharded": (10.7, 10.7, 10.7, "transformer 9.3 bf16 + LoRA state 1.4: the part FSDP2 shards"),
    },
}
"""Peak GiB of one worker where the cost row gives none: (value, low, high, source). Every
role loads the UMT5 text encoder (10.6 GiB bf16) onto its GPU (models/wan22.py)."""


class Input(msgspec.Struct, frozen=True, kw_only=True):
    """One number the prediction used, and where it comes from."""

    name: str
    value: float
    unit: str
    status: Literal["measured", "derived", "not measured", "assumed", "recipe", "option"]
    """derived: exact arithmetic on known sizes (parameter counts x bytes)."""
    source: str
    low: float | None = None
    high: float | None = None
    """The range an unmeasured or assumed input spans."""


class Layout(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    split: cm.Split
    prediction: cm.Prediction
    fits: bool
    trainer_mode: str | None


class RangeEnd(msgspec.Struct, frozen=True, kw_only=True):
    """Predictions with every unmeasured input at one end of its range (the fast end: costs
    and memory low, efficiency high; the slow end: the reverse)."""

    costs: cm.Costs
    dp_efficiency: float
    memory: cm.Memory
    chosen: float
    baseline: float
    sync: float
    chosen_fits: bool
    baseline_fits: bool


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    recipe: str
    model: str
    gpus: int
    gpu_memory_gb: float
    costs_file: str
    shape: cm.Shape
    costs: cm.Costs
    memory: cm.Memory
    inputs: list[Input]
    chosen: Layout
    runners_up: list[Layout]
    """The next fastest fitting splits."""
    baseline: Layout
    recipe_layout: Layout
    recipe_sharding: str
    """The recipe's pipeline.trainer.sharding."""
    sync_samples_per_s: float
    sync_gib_per_gpu: float
    sync_reward_resident: bool
    fast: RangeEnd
    slow: RangeEnd
    extrapolations: list[str]


def recipe_shape(recipe: Any) -> cm.Shape:
    s = recipe.sampling
    guidance = max(s.guidance_scale, s.guidance_scale_2 or 0.0)
    return cm.Shape(height=s.height, width=s.width, frames=s.num_frames, steps=s.num_inference_steps,
                    sde_steps=sde_steps(s), guidance=guidance, updates=recipe.algorithm.updates_per_batch,
                    batch=recipe.pipeline.groups_per_step * s.samples_per_prompt,
                    eta=recipe.pipeline.max_staleness)


def sde_steps(s: Any) -> int:
    """K, the SDE steps every trajectory scores (a recipe that selects none is bad input)."""
    from unirl_stream.algorithms.selection import num_sde_steps

    try:
        return num_sde_steps(s.sde, s.num_inference_steps)
    except ValueError as e:
        raise UserInputError(str(e)) from None


def memory(rows: dict[str, CostRow], family: str) -> tuple[cm.Memory, list[Input]]:
    """Worker memory from the rows' memory_gib / sharded_gib where given, else from MEMORY."""
    table = MEMORY.get(family, {})
    rep = rows["replay"]
    given = {"rollout": rows["rollout"].memory_gib, "reward": rows["reward"].memory_gib,
             "trainer": rep.memory_gib, "trainer_sharded": rep.sharded_gib or None}
    got: dict[str, float] = {}
    inputs = []
    for key, gib in given.items():
        if gib is not None:
            got[key] = gib
            inputs.append(Input(name=f"memory.{key}", value=gib, unit="GiB", status="measured",
                                source=f"cost row of {'replay' if key.startswith('trainer') else key}"))
        elif key in table:
            got[key], low, high, src = table[key]
            ranged = low != high
            inputs.append(Input(name=f"memory.{key}", value=got[key], unit="GiB", source=src,
                                status="not measured" if ranged else "derived",
                                low=low if ranged else None, high=high if ranged else None))
        else:
            raise UserInputError(f"costs: no memory_gib for model {family!r} ({key}); add it to its cost row")
    return cm.Memory(**got), inputs


def cost_inputs(rows: dict[str, CostRow], shape: cm.Shape) -> tuple[list[Input], list[str]]:
    inputs, extra = [], []
    for stage in (s for s in STAGES + OPTIONAL if s in rows):
        r = rows[stage]
        f = cm.scale(r, shape)
        where = f"{r.gpu}, {r.height}x{r.width}x{r.frames}, {r.steps} steps, guidance {r.guidance:g}"
        inputs.append(Input(name=f"{stage}_s", value=r.seconds, unit="s/sample", low=r.low, high=r.high,
                            status="measured" if r.measured else "not measured", source=f"{r.source} [{where}]"))
        if abs(f - 1.0) > 1e-9:
            how = "pixels x frames" if stage == "decode" else \
                "tokens x steps x CFG passes; attention is not linear in tokens"
            extra.append(f"{stage}: x{f:.3g} from the row's {where} to the recipe ({how}): an extrapolation")
    if "sync_rollout" not in rows:
        r = rows["rollout"]
        inputs.append(Input(name="sync_rollout_s", value=r.seconds, unit="s/sample", low=r.low, high=r.high,
                            status="measured" if r.measured else "not measured",
                            source="= rollout_s (no sync_rollout row: the trainer's model samples with the "
                                   "producers' adapter precision)"))
    rep = rows["replay"]
    share = rep.proximal_s / rep.seconds
    inputs.append(Input(name="replay_proximal_s", value=rep.proximal_s, unit="s/sample",
                        status="measured" if rep.measured else "not measured",
                        low=None if rep.low is None else rep.low * share,
                        high=None if rep.high is None else rep.high * share,
                        source=f"share of replay_s that is the proximal pass (paid once, the update "
                               f"x updates_per_batch = {shape.updates})"))
    return inputs, extra


def recipe_inputs(recipe_path: Path, shape: cm.Shape, gpu_gb: float) -> list[Input]:
    where = str(recipe_path)
    return [Input(name="gpu_memory", value=gpu_gb, unit="GiB", status="option", source="--gpu-memory-gb"),
            Input(name="max_staleness", value=shape.eta, unit="", status="recipe",
                  source=f"{where}: pipeline.max_staleness"),
            Input(name="batch", value=shape.batch, unit="samples", status="recipe",
                  source=f"{where}: pipeline.groups_per_step x sampling.samples_per_prompt"),
            Input(name="sde_steps", value=shape.sde_steps, unit="", status="recipe",
                  source=f"{where}: sampling.sde (selection, fraction) over num_inference_steps"),
            Input(name="updates_per_batch", value=shape.updates, unit="", status="recipe",
                  source=f"{where}: algorithm.updates_per_batch")]


def recipe_split(recipe: Any) -> cm.Split:
    p = recipe.pipeline
    by_ids = bool(p.reward.gpu_ids) and set(p.reward.gpu_ids) <= set(p.rollout.gpu_ids)
    by_fraction = not p.reward.gpu_ids and 0 < p.reward.num_gpus and p.rollout.num_gpus + p.reward.num_gpus <= 1
    shared = by_ids or by_fraction
    return cm.Split(rollout=p.rollout_workers, reward=p.reward_workers, trainer=p.trainer_workers,
                    reward_shared=shared)


def layout(name: str, split: cm.Split, c: cm.Costs, mem: cm.Memory, gpu_gb: float, dp: float,
           eta: int, batch: int) -> Layout:
    return Layout(name=name, split=split, prediction=cm.predict(split, c, dp, eta, batch),
                  fits=cm.fits(split, mem, gpu_gb), trainer_mode=cm.trainer_mode(mem, split.trainer, gpu_gb))


def memory_at(inputs: list[Input], which: cm.End) -> cm.Memory:
    def gib(i: Input) -> float:
        bound = {"low": i.low, "high": i.high, "value": None}[which]
        return i.value if bound is None else bound

    return cm.Memory(**{i.name.removeprefix("memory."): gib(i) for i in inputs if i.name.startswith("memory.")})


def end(rows: dict[str, CostRow], shape: cm.Shape, which: cm.End, dp: float, mem_inputs: list[Input],
        gpu_gb: float, splits: tuple[cm.Split, cm.Split], gpus: int) -> RangeEnd:
    c, mem, b = cm.costs(rows, shape, which), memory_at(mem_inputs, which), shape.batch
    chosen, baseline = splits
    return RangeEnd(costs=c, dp_efficiency=dp, memory=mem,
                    chosen=cm.predict(chosen, c, dp, shape.eta, b).samples_per_s,
                    baseline=cm.predict(baseline, c, dp, shape.eta, b).samples_per_s,
                    sync=cm.sync_rate(c, gpus, dp, b), chosen_fits=cm.fits(chosen, mem, gpu_gb),
                    baseline_fits=cm.fits(baseline, mem, gpu_gb))


def runners_up(splits: list[cm.Split], n: int = 3) -> list[cm.Split]:
    """The next ``n`` splits with another producer/trainer count than every one before
    (more reward workers alone change little)."""
    seen, out = {(splits[0].rollout, splits[0].trainer)}, []
    for s in splits[1:]:
        if (s.rollout, s.trainer) not in seen and len(out) < n:
            seen.add((s.rollout, s.trainer))
            out.append(s)
    return out


def make_plan(recipe_path: Path, gpus: int, costs_path: Path | None, gpu_gb: float,
              family: str | None = None, dp_efficiency: float | None = None) -> Plan:
    """Everything ``plan`` prints, computed; bad input raises UserInputError."""
    from unirl_stream.recipe import load

    if gpus < 2:
        raise UserInputError(f"--gpus: {gpus}: a layout needs at least 2 GPUs (a producer and a trainer rank)")
    if gpu_gb <= 0:
        raise UserInputError(f"--gpu-memory-gb: {gpu_gb}: expected GiB per GPU > 0, e.g. 80")
    recipe = load(recipe_path)
    family = family or model_family(recipe.model.path)
    if family is None:
        raise UserInputError(f"{recipe_path}: model.path: cannot tell the model family of "
                             f"{recipe.model.path!r}; pass --model A14B or --model TI2V-5B")
    path = costs_path or DEFAULT_COSTS
    rows = pick(load_costs(path), family, path)
    shape = recipe_shape(recipe)
    mem, mem_inputs = memory(rows, family)
    c = cm.costs(rows, shape)
    dp, dp_low, dp_high = DP_EFFICIENCY if dp_efficiency is None else (dp_efficiency,) * 3
    if not 0 < dp <= 1:
        raise UserInputError(f"--dp-efficiency: {dp}: expected a fraction in (0, 1], e.g. 0.9")
    splits = cm.ranked(gpus, c, mem, gpu_gb, dp, shape.eta, shape.batch)
    if not splits:
        raise UserInputError(f"--gpus {gpus} --gpu-memory-gb {gpu_gb:g}: no split fits: a producer needs "
                             f"{mem.rollout:g} GiB, a trainer rank {cm.trainer_rank_gib(mem, gpus - 1, 'fsdp'):.1f}"
                             f" GiB even sharded over {gpus - 1}")
    chosen = splits[0]
    base = cm.Split(rollout=gpus - 2, reward=1, trainer=1, reward_shared=False) if gpus > 2 else \
        cm.Split(rollout=1, reward=1, trainer=1, reward_shared=True)
    inputs, extra = cost_inputs(rows, shape)
    dp_input = Input(name="dp_efficiency", value=dp, low=dp_low, high=dp_high, unit="", status="assumed",
                     source=DP_SOURCE) if dp_efficiency is None else \
        Input(name="dp_efficiency", value=dp, unit="", status="option", source="--dp-efficiency")
    inputs += [dp_input, *mem_inputs, *recipe_inputs(recipe_path, shape, gpu_gb)]
    sync_gib = cm.trainer_rank_gib(mem, gpus, "fsdp") + mem.reward
    return Plan(
        recipe=str(recipe_path), model=family, gpus=gpus, gpu_memory_gb=gpu_gb,
        costs_file=str(costs_path) if costs_path else "benchmarks/results/costs_h200.jsonl (default)",
        shape=shape, costs=c, memory=mem, inputs=inputs,
        chosen=layout("chosen", chosen, c, mem, gpu_gb, dp, shape.eta, shape.batch),
        baseline=layout("one trainer", base, c, mem, gpu_gb, dp, shape.eta, shape.batch),
        runners_up=[layout("runner-up", s, c, mem, gpu_gb, dp, shape.eta, shape.batch) for s in runners_up(splits)],
        recipe_layout=layout("recipe as written", recipe_split(recipe), c, mem, gpu_gb, dp, shape.eta, shape.batch),
        recipe_sharding=recipe.pipeline.trainer.sharding,
        sync_samples_per_s=cm.sync_rate(c, gpus, dp, shape.batch), sync_gib_per_gpu=sync_gib,
        sync_reward_resident=sync_gib <= gpu_gb,
        fast=end(rows, shape, "low", dp_high, mem_inputs, gpu_gb, (chosen, base), gpus),
        slow=end(rows, shape, "high", dp_low, mem_inputs, gpu_gb, (chosen, base), gpus), extrapolations=extra)

"""The text and JSON forms of a Plan."""

from __future__ import annotations

from typing import Any

import msgspec

from unirl_stream.planning import model as cm
from unirl_stream.planning.plan import Input, Layout, Plan, RangeEnd


def ratios(p: Plan) -> dict[str, float]:
    chosen = p.chosen.prediction.samples_per_s
    return {"chosen_over_one_trainer": chosen / p.baseline.prediction.samples_per_s,
            "chosen_over_sync": chosen / p.sync_samples_per_s,
            "fast_chosen_over_one_trainer": p.fast.chosen / p.fast.baseline,
            "slow_chosen_over_one_trainer": p.slow.chosen / p.slow.baseline,
            "fast_chosen_over_sync": p.fast.chosen / p.fast.sync,
            "slow_chosen_over_sync": p.slow.chosen / p.slow.sync}


def as_json(p: Plan) -> str:
    out: dict[str, Any] = msgspec.to_builtins(p)
    out["ratios"] = ratios(p)
    return msgspec.json.format(msgspec.json.encode(out)).decode() + "\n"


def _split_text(s: cm.Split) -> str:
    reward = (f"{s.reward} reward worker(s) sharing producer GPUs" if s.reward_shared
              else f"{s.reward} reward worker(s) on their own GPU(s)")
    return f"{s.rollout} rollout producer(s), {reward}, {s.trainer} trainer rank(s)"


def _memory_text(lay: Layout, p: Plan) -> str:
    m, g = p.memory, p.gpu_memory_gb
    producer = m.rollout + (m.reward if lay.split.reward_shared else 0.0)
    shared = f" + reward {m.reward:g}" if lay.split.reward_shared else ""
    ranks = lay.split.trainer
    if lay.trainer_mode is None:
        how = "even sharded by FSDP2" if ranks > 1 else "(one rank: nothing to shard)"
        trainer = (f"a trainer rank needs {cm.trainer_rank_gib(p.memory, ranks, 'fsdp'):.1f} GiB {how}: "
                   f"DOES NOT FIT {g:g} GiB")
    else:
        need = cm.trainer_rank_gib(m, lay.split.trainer, lay.trainer_mode)
        trainer = f"trainer {lay.trainer_mode} {need:.1f} GiB/rank"
        if lay.trainer_mode == "fsdp":
            trainer += f" (replicated it would need {m.trainer:g})"
    fit = "fits" if producer <= g else "DOES NOT FIT"
    return f"memory of {g:g} GiB: producer {m.rollout:g}{shared} GiB ({fit}); {trainer}"


def _layout_lines(title: str, lay: Layout, p: Plan) -> list[str]:
    pr = lay.prediction
    cap = ", ".join(f"{k} {v:.4g}" for k, v in pr.capacity.items())
    gate = "ok" if pr.eta_needed <= p.shape.eta else \
        f"TOO LOW: the gate holds it below its bound {pr.bound:.4g}"
    lines = [f"{title}: {_split_text(lay.split)} = {lay.split.gpus()} GPUs",
             f"  predicted {pr.samples_per_s:.4g} samples/s, bottleneck {pr.bottleneck}",
             f"  capacity (samples/s): {cap}",
             f"  staleness gate: the overlap needs max_staleness >= {pr.eta_needed} "
             f"(recipe: {p.shape.eta}): {gate}",
             f"  {_memory_text(lay, p)}"]
    busiest = cm.shard(p.shape.batch, lay.split.trainer)
    if busiest * lay.split.trainer != p.shape.batch:
        lines.append(f"  trainer shards: {p.shape.batch} samples over {lay.split.trainer} ranks, {busiest} on the "
                     f"busiest: {p.shape.batch / (busiest * lay.split.trainer):.0%} of the ranks' time is used")
    if not lay.fits:
        lines.append("  (predicted as if it fit)")
    return lines


def _sharding_lines(p: Plan) -> list[str]:
    """The recipe's trainer memory mode against the one its split needs."""
    ranks, need = p.recipe_layout.split.trainer, p.recipe_layout.trainer_mode
    if need != "fsdp" or ranks == 1 or p.recipe_sharding == "fsdp":
        return [f"  pipeline.trainer.sharding = {p.recipe_sharding!r}: "
                + ("fits" if need is not None else "no mode fits")]
    gib = cm.trainer_rank_gib(p.memory, ranks, "replicate")
    return [f"  pipeline.trainer.sharding = 'replicate' needs {gib:g} GiB a rank of {p.gpu_memory_gb:g}: "
            "set 'fsdp'"]


def _end_lines(name: str, e: RangeEnd) -> list[str]:
    m = e.memory
    fit = {True: "fits", False: "DOES NOT FIT"}
    return [f"  {name}: costs rollout {e.costs.rollout:.3g} + decode {e.costs.decode:.3g} s, reward "
            f"{e.costs.reward:.3g} s, replay {e.costs.replay:.4g} s, dp efficiency {e.dp_efficiency:g} -> chosen "
            f"{e.chosen:.4g}, one trainer {e.baseline:.4g} ({e.chosen / e.baseline:.2f}x), sync {e.sync:.4g} "
            f"(chosen/sync {e.chosen / e.sync:.2f}x) samples/s",
            f"    memory producer {m.rollout:g}, reward {m.reward:g}, trainer {m.trainer:g} GiB: chosen split "
            f"{fit[e.chosen_fits]}, today's {fit[e.baseline_fits]}"]


def _input_line(i: Input) -> str:
    what = i.status if i.low is None or i.high is None else \
        f"{i.status.upper()}, range {i.low:.4g} .. {i.high:.4g}"
    return f"  {i.name:<24} {i.value:>9.4g} {i.unit:<9} {what}; {i.source}"


def as_text(p: Plan) -> str:
    s, c, r = p.shape, p.costs, ratios(p)
    dp = next(i.value for i in p.inputs if i.name == "dp_efficiency")
    lines = [f"plan: {p.recipe} on {p.gpus} GPUs x {p.gpu_memory_gb:g} GiB, model {p.model}, costs {p.costs_file}",
             f"recipe shape: {s.height}x{s.width}x{s.frames}, {s.steps} steps ({s.sde_steps} SDE), guidance "
             f"{s.guidance:g}, {s.updates} updates per batch, batch {s.batch} samples, max_staleness {s.eta}",
             f"per-sample GPU seconds at that shape: rollout {c.rollout:.4g}, decode {c.decode:.4g}, "
             f"reward {c.reward:.4g}, replay {c.replay:.4g}", ""]
    lines += _layout_lines("chosen split", p.chosen, p)
    lines += [f"  runner-up: {lay.split.rollout}/{lay.split.reward}{'*' if lay.split.reward_shared else ''}/"
              f"{lay.split.trainer} {lay.prediction.samples_per_s:.4g} samples/s ({lay.prediction.bottleneck}-bound)"
              for lay in p.runners_up]
    if p.runners_up:
        lines.append("  (rollout/reward/trainer; * = reward beside a producer)")
    lines += [""] + _layout_lines("today's split (one trainer, one reward GPU, the rest producers)",
                                  p.baseline, p)
    lines += [f"  chosen / today: {r['chosen_over_one_trainer']:.2f}x"]
    if p.recipe_layout.split != p.chosen.split:
        lines += [""] + _layout_lines("the recipe as written", p.recipe_layout, p)
    else:
        lines += ["", "the recipe as written: the chosen split"]
    lines += _sharding_lines(p)
    lines += ["", f"synchronous loop on the same {p.gpus} GPUs (every phase sharded over all {p.gpus}, one after "
                  f"another): {p.sync_samples_per_s:.4g} samples/s",
              f"  = {s.batch} / ({cm.shard(s.batch, p.gpus)} x (rollout {c.sync_rollout:.4g}/{dp:g} + decode "
              f"{c.decode:.4g} + reward {c.reward:.4g} + replay {c.replay:.4g}/{dp:g})): rollout through the "
              "trainer's FSDP2 model and adapters, decode and reward data parallel",
              f"  reward model {'resident' if p.sync_reward_resident else 'NOT resident (swap time not modelled)'}:"
              f" {p.sync_gib_per_gpu:.1f} of {p.gpu_memory_gb:g} GiB per GPU",
              f"  chosen / sync: {r['chosen_over_sync']:.2f}x", "",
              "at the ends of the unmeasured inputs' ranges (split kept):",
              *_end_lines("fast end", p.fast), *_end_lines("slow end", p.slow), "", "inputs:"]
    lines += [_input_line(i) for i in p.inputs]
    lines += ["extrapolations: " + ("none (every row is at the recipe's shape)" if not p.extrapolations else "")]
    lines += [f"  {x}" for x in p.extrapolations]
    return "\n".join(lines) + "\n"

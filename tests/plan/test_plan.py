"""``unirl-stream plan``: the cost model on hand-made cost files (every number below is
computed by hand in the comments), bad input, and the real command on the shipped recipe."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from unirl_stream.cli import main
from unirl_stream.planning import model as cm
from unirl_stream.planning.costs import CostRow, load_costs

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "wan22_dancegrpo.toml"
GEOMETRY = {"model": "A14B", "height": 480, "width": 832, "frames": 33, "guidance": 1.0, "source": "hand-made"}


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def hand_rows(replay: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Producer 9 + 1 = 10 s, reward 1 s, replay 20 s per sample (no proximal share)."""
    return [{**GEOMETRY, "stage": "rollout", "seconds": 9.0, "steps": 20},
            {**GEOMETRY, "stage": "decode", "seconds": 1.0, "steps": 1},
            {**GEOMETRY, "stage": "reward", "seconds": 1.0, "steps": 1},
            {**GEOMETRY, "stage": "replay", "seconds": 20.0, "steps": 12, **(replay or {})}]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    """The shipped recipe (eta 1, batch 32) with one update per batch (so replay = its row)."""
    # One trainer rank as written: these tests must not depend on the trainer group landing.
    text = RECIPE.read_text(encoding="utf-8").replace("updates_per_batch = 2", "updates_per_batch = 1")
    text = text.replace("trainer_workers = 6", "trainer_workers = 1")
    assert "max_staleness = 1" in text and "updates_per_batch = 1" in text and "groups_per_step = 2" in text
    path = tmp_path / "r.toml"
    path.write_text(text, encoding="utf-8")
    return path


def plan_json(recipe: Path, costs: Path, *extra: str) -> dict[str, Any]:
    code, out, err = cli("plan", str(recipe), "--gpus", "8", "--costs", str(costs), "--json", *extra)
    assert (code, err) == (0, ""), err
    return json.loads(out)


def test_known_optimum_bottleneck_and_sync_by_hand(recipe: Path, tmp_path: Path) -> None:
    got = plan_json(recipe, write_jsonl(tmp_path / "c.jsonl", hand_rows()))
    chosen = got["chosen"]
    # Shared reward (70 + 4 GiB <= 80): producers r / (10 + 1); t ranks step on ceil(32 / t)
    # samples: 32 * 0.9 / (ceil(32 / t) * 20). r=3,t=5: min(0.2727, 28.8 / 140 = 0.2057);
    # r=2,t=6: min(0.1818, 0.24); r=4,t=4: min(0.3636, 0.18); own reward GPU r=2,w=1,t=5:
    # min(0.2, 1, 0.2057) = 0.2. Best: 3 producers (+1 reward on one of them), 5 ranks.
    assert chosen["split"] == {"rollout": 3, "reward": 1, "trainer": 5, "reward_shared": True}
    assert chosen["prediction"]["samples_per_s"] == pytest.approx(28.8 / 140)
    assert chosen["prediction"]["bottleneck"] == "trainer"
    # Latency 11/3 + 1 + 140/28.8 = 9.53 s per sample; 0.2057 * 9.53 = 1.96 -> eta 1 needed.
    assert chosen["prediction"]["eta_needed"] == 1
    # Today 6/1/1: one trainer rank, efficiency 1: 1/20 = 0.05 samples/s.
    assert got["baseline"]["prediction"]["samples_per_s"] == pytest.approx(0.05)
    assert got["ratios"]["chosen_over_one_trainer"] == pytest.approx(28.8 / 140 / 0.05)
    # Runners-up: own reward GPU 2/1/5 (bound 0.2, but eta 1 allows 2 / (5 + 1 + 4.861) =
    # 0.184), then 2/1*/6 (producer-bound 2 / 11 = 0.1818).
    ups = [(u["split"]["rollout"], u["split"]["trainer"], u["prediction"]["samples_per_s"])
           for u in got["runners_up"][:2]]
    assert ups == [(2, 5, pytest.approx(2 / (5 + 1 + 140 / 28.8))), (2, 6, pytest.approx(2 / 11))]
    # Sync: 32 / (4 per GPU x (9/0.9 + 1 + 1 + 20/0.9)) = 8 / 34.222.
    assert got["sync_samples_per_s"] == pytest.approx(8 / 34.2222222, rel=1e-6)
    assert got["ratios"]["chosen_over_sync"] == pytest.approx(28.8 / 140 / (8 / 34.2222222), rel=1e-6)


def test_a_measured_dp_efficiency_replaces_the_assumed_range(recipe: Path, tmp_path: Path) -> None:
    got = plan_json(recipe, write_jsonl(tmp_path / "c.jsonl", hand_rows()), "--dp-efficiency", "0.5")
    # r=2,t=6: min(2 / 11, 32 * 0.5 / (6 * 20) = 0.1333); r=3,t=5: 16 / 140 = 0.114.
    assert got["chosen"]["split"] == {"rollout": 2, "reward": 1, "trainer": 6, "reward_shared": True}
    assert got["chosen"]["prediction"]["samples_per_s"] == pytest.approx(16 / 120)
    dp = next(i for i in got["inputs"] if i["name"] == "dp_efficiency")
    assert (dp["value"], dp["status"], dp["low"]) == (0.5, "option", None)
    assert got["fast"]["chosen"] == got["slow"]["chosen"] == pytest.approx(16 / 120)
    code, _, err = cli("plan", str(recipe), "--gpus", "8", "--costs", str(tmp_path / "c.jsonl"),
                       "--dp-efficiency", "1.5")
    assert code == 2 and "--dp-efficiency: 1.5: expected a fraction in (0, 1]" in err


def test_sync_rollout_row_prices_the_trainers_sampler(recipe: Path, tmp_path: Path) -> None:
    rows = [*hand_rows(), {**GEOMETRY, "stage": "sync_rollout", "seconds": 18.0, "steps": 20}]
    got = plan_json(recipe, write_jsonl(tmp_path / "c.jsonl", rows))
    # 32 / (4 x (18/0.9 + 1 + 1 + 20/0.9)) = 8 / 44.222; the async split is unchanged.
    assert got["sync_samples_per_s"] == pytest.approx(8 / 44.2222222, rel=1e-6)
    assert got["chosen"]["prediction"]["samples_per_s"] == pytest.approx(28.8 / 140)
    assert [i["value"] for i in got["inputs"] if i["name"] == "sync_rollout_s"] == [18.0]


def test_a_low_eta_holds_the_pipeline_below_its_bound(recipe: Path, tmp_path: Path) -> None:
    c = cm.Costs(rollout=9.0, decode=1.0, reward=1.0, replay=20.0, sync_rollout=9.0)
    one = cm.Split(rollout=3, reward=1, trainer=5, reward_shared=True)
    latency = 11 / 3 + 1 + 140 / 28.8
    # eta 0 allows 1 / latency = 0.105, below the bound 0.2057 that eta 1 reaches.
    assert cm.predict(one, c, 0.9, eta=0, batch=32).samples_per_s == pytest.approx(1 / latency)
    assert cm.predict(one, c, 0.9, eta=1, batch=32).samples_per_s == pytest.approx(28.8 / 140)
    # 30 samples over 5 ranks are 6 each, even; 32 put 7 on the busiest rank (above).
    assert cm.capacities(one, c, 0.9, 30)["trainer"] == pytest.approx(30 * 0.9 / (6 * 20))
    eta0 = recipe.parent / "eta0.toml"
    eta0.write_text(recipe.read_text().replace("max_staleness = 1", "max_staleness = 0"))
    code, out, _ = cli("plan", str(eta0), "--gpus", "8", "--costs", str(write_jsonl(tmp_path / "c.jsonl", hand_rows())))
    # One trainer, eta 0: 1 / (10/6 + 1 + 20) = 0.04412 instead of its bound 0.05.
    assert code == 0 and "predicted 0.04412 samples/s" in out
    assert "needs max_staleness >= 1 (recipe: 0): TOO LOW" in out


def test_unmeasured_input_prints_its_range_and_both_ends(recipe: Path, tmp_path: Path) -> None:
    costs = write_jsonl(tmp_path / "c.jsonl", hand_rows({"low": 10.0, "high": 40.0}))
    got = plan_json(recipe, costs)
    # Slow end: replay 40, dp 0.8: chosen 32 * 0.8 / (7 * 40) = 0.0914, one trainer 1/40.
    assert got["slow"]["chosen"] == pytest.approx(25.6 / 280)
    assert got["slow"]["baseline"] == pytest.approx(0.025)
    # Fast end: replay 10, dp 0.97: trainer 31.04 / 70 = 0.443 > producers 3 / 11 = 0.2727.
    assert got["fast"]["chosen"] == pytest.approx(3 / 11)
    code, out, _ = cli("plan", str(recipe), "--gpus", "8", "--costs", str(costs))
    assert code == 0
    assert "replay_s                        20 s/sample  NOT MEASURED, range 10 .. 40; hand-made" in out
    assert "rollout_s                        9 s/sample  measured" in out
    assert "slow end:" in out and "one trainer 0.025 (3.66x)" in out


def test_geometry_scaling_is_an_extrapolation(recipe: Path, tmp_path: Path) -> None:
    rows = hand_rows()
    rows[0] |= {"frames": 17, "steps": 10}  # 5 latent frames instead of 9, half the steps
    got = plan_json(recipe, write_jsonl(tmp_path / "c.jsonl", rows))
    assert got["costs"]["rollout"] == pytest.approx(9.0 * 9 / 5 * 2)
    assert len(got["extrapolations"]) == 1 and "an extrapolation" in got["extrapolations"][0]
    row = CostRow(**{**GEOMETRY, "stage": "replay", "seconds": 1.0, "steps": 12, "guidance": 5.0})
    shape = cm.Shape(height=480, width=832, frames=33, steps=20, sde_steps=6, guidance=1.0, updates=1,
                     batch=32, eta=1)
    assert cm.scale(row, shape) == pytest.approx(0.5 * 0.5)  # half the SDE steps, no CFG pair


def test_memory_decides_sharing_and_sharding(recipe: Path, tmp_path: Path) -> None:
    costs = write_jsonl(tmp_path / "c.jsonl", hand_rows())
    six = recipe.parent / "six.toml"  # six replicated ranks: 85 GiB each does not fit 80
    six.write_text(recipe.read_text().replace("trainer_workers = 1", "trainer_workers = 6")
                   .replace('sharding = "fsdp"', 'sharding = "replicate"'))
    code, out, _ = cli("plan", str(six), "--gpus", "8", "--costs", str(costs))
    assert code == 0 and "pipeline.trainer.sharding = 'replicate' needs 85 GiB a rank of 80: set 'fsdp'" in out
    big = plan_json(recipe, costs, "--gpu-memory-gb", "141")
    assert big["chosen"]["trainer_mode"] == "replicate"  # 85 GiB fits one 141 GiB GPU
    assert big["baseline"]["fits"] is True
    small = plan_json(recipe, costs)
    assert small["chosen"]["trainer_mode"] == "fsdp"  # 85 > 80: 19.1 + 65.9 / 5 = 32.3 GiB a rank
    assert small["baseline"]["fits"] is False
    code, _, err = cli("plan", str(recipe), "--gpus", "8", "--costs", str(costs), "--gpu-memory-gb", "60")
    assert code == 2 and err.count("\n") == 1 and "no split fits: a producer needs 70 GiB" in err


def test_memory_from_the_cost_rows(recipe: Path, tmp_path: Path) -> None:
    rows = hand_rows()
    rows[0]["memory_gib"] = 79.0  # a producer this big leaves no room for the reward model
    got = plan_json(recipe, write_jsonl(tmp_path / "c.jsonl", rows))
    # Own reward GPU: r=2,w=1,t=5: bound min(2 / 10, 1, 0.2057) = 0.2 (r=3,w=1,t=4: 0.18);
    # latency 5 + 1 + 4.861 = 10.861 s, so eta 1 allows 2 / 10.861 = 0.184 (eta 2 is needed).
    pred = got["chosen"]["prediction"]
    assert got["chosen"]["split"] == {"rollout": 2, "reward": 1, "trainer": 5, "reward_shared": False}
    assert (pred["bound"], pred["bottleneck"], pred["eta_needed"]) == (pytest.approx(0.2), "rollout", 2)
    assert pred["samples_per_s"] == pytest.approx(2 / (5 + 1 + 140 / 28.8))
    memory = {i["name"]: i for i in got["inputs"] if i["name"].startswith("memory.")}
    assert memory["memory.rollout"]["value"] == 79.0 and memory["memory.rollout"]["status"] == "measured"
    assert memory["memory.trainer"]["status"] == "not measured" and memory["memory.trainer"]["high"] == 92.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"stage": "vae", ' + json.dumps(GEOMETRY)[1:-1] + ', "seconds": 1, "steps": 1}\n',
         "c.jsonl:1: stage: unknown stage 'vae' (known: rollout, decode, reward, replay, sync_rollout)"),
        ("stage,seconds\nrollout,1\n", "c.jsonl:1: not a JSON object"),
        (json.dumps({**GEOMETRY, "stage": "rollout", "seconds": "fast", "steps": 1}) + "\n",
         "c.jsonl:1: seconds: Expected `float`, got `str`"),
        ("\n" + json.dumps({**GEOMETRY, "stage": "rollout", "seconds": 2.0, "low": 3.0, "steps": 1}) + "\n",
         "c.jsonl:2: low/high: the range [3.0, 2.0] must contain seconds = 2.0"),
    ],
    ids=["unknown-stage", "not-jsonl", "wrong-type", "bad-range"],
)
def test_bad_cost_files_exit_2_with_one_line(recipe: Path, tmp_path: Path, content: str, message: str) -> None:
    costs = tmp_path / "c.jsonl"
    costs.write_text(content, encoding="utf-8")
    code, out, err = cli("plan", str(recipe), "--gpus", "8", "--costs", str(costs))
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_bad_arguments_exit_2(recipe: Path, tmp_path: Path) -> None:
    costs = write_jsonl(tmp_path / "c.jsonl", hand_rows())
    for args, message in [(["--gpus", "0"], "--gpus: 0: a layout needs at least 2 GPUs"),
                          (["--gpus", "8", "--costs", str(tmp_path / "none.jsonl")], "cannot read the costs file"),
                          (["--gpus", "8", "--costs", str(costs), "--model", "TI2V-5B"],
                           "no cost row for model 'TI2V-5B', stage(s) rollout, decode, reward, replay")]:
        code, _, err = cli("plan", str(recipe), *args)
        assert code == 2 and err.count("\n") == 1 and message in err, err


def test_benchmark_rows_from_gpu_wan22_are_read(recipe: Path, tmp_path: Path) -> None:
    """The stage-cost rows ``benchmarks/gpu_wan22.py`` writes (rows.py schema)."""
    def bench(stage: str, value: float, **extra: Any) -> dict[str, Any]:
        config = {"layout": "a14b", "model": "Wan2.2-T2V-A14B (reduced depth)", "geometry": "480x832x33",
                  "steps": 20, "sde_steps": 12, "guidance": 1.0, "gpu": "NVIDIA H200", "stage": stage, **extra}
        return {"benchmark": "wan22_stage_costs", "config": config, "metric": "stage_s_per_sample",
                "value": value, "unit": "s", "git_commit": "abc1234", "machine": "x", "time": 0.0}
    rows = [bench("rollout", 9.0), bench("decode", 1.0), bench("reward", 1.0),
            bench("replay", 20.0, proximal_s=4.0),
            {"benchmark": "gpu_wan22", "config": {}, "metric": "matmul_roof_tflops", "value": 700.0}]
    got = plan_json(recipe, write_jsonl(tmp_path / "b.jsonl", rows))
    assert got["model"] == "A14B" and got["costs"]["replay"] == pytest.approx(20.0)
    assert got["chosen"]["split"]["trainer"] == 5
    assert all(i["status"] == "measured" for i in got["inputs"] if i["name"].endswith("_s"))


def test_shipped_recipe_on_8_gpus_with_committed_costs() -> None:
    code, out, err = cli("plan", str(RECIPE), "--gpus", "8")
    assert (code, err) == (0, "")
    code, js, _ = cli("plan", str(RECIPE), "--gpus", "8", "--json")
    got = json.loads(js)
    assert got["baseline"]["split"] == {"rollout": 6, "reward": 1, "trainer": 1, "reward_shared": False}
    assert got["ratios"]["chosen_over_one_trainer"] >= 4.0
    assert got["ratios"]["slow_chosen_over_one_trainer"] >= 4.0  # and at the slow end of every range
    assert got["fast"]["chosen_fits"] and got["slow"]["chosen_fits"]  # memory at both ends too
    assert "chosen / today:" in out and "chosen / sync:" in out and "synchronous loop on the same 8 GPUs" in out
    names = {i["name"] for i in got["inputs"]}
    assert names >= {"rollout_s", "decode_s", "reward_s", "replay_s", "replay_proximal_s", "dp_efficiency",
                     "memory.rollout", "memory.trainer", "max_staleness", "batch", "sde_steps"}
    for i in got["inputs"]:
        assert f"  {i['name']} " in out and i["source"][:40] in out
        assert i["status"] not in ("not measured", "assumed") or (i["low"] is not None and i["high"] is not None)
    assert "replay_s                      62.6 s/sample  NOT MEASURED, range 56.9 .. 87.8" in out


def test_the_recipe_ships_the_split_plan_chooses() -> None:
    got = json.loads(cli("plan", str(RECIPE), "--gpus", "8", "--json")[1])
    assert got["recipe_layout"]["split"] == got["chosen"]["split"]
    out = cli("plan", str(RECIPE), "--gpus", "8")[1]
    assert "the recipe as written: the chosen split\n  pipeline.trainer.sharding = 'fsdp': fits" in out
    assert got["chosen"]["trainer_mode"] == "fsdp" and got["recipe_sharding"] == "fsdp"


def test_plan_imports_no_torch(recipe: Path) -> None:
    code = "\n".join([
        "import sys", "from unirl_stream.cli import main", "try:",
        f"    main(['plan', {str(recipe)!r}, '--gpus', '8'])", "except SystemExit as e:",
        "    assert e.code == 0, e.code", "assert 'torch' not in sys.modules"])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_gate_model_against_the_measured_pipeline_overlap_runs() -> None:
    """The committed benchmark rows (real pipeline, sleep-cost stages): the model's fraction
    of the bound per eta is within 0.11 of what was measured (it ignores that reward streams
    behind rollout within a batch, so it is a little pessimistic)."""
    seen = 0
    for line in (ROOT / "benchmarks" / "results" / "pipeline_overlap.jsonl").read_text().splitlines():
        row = json.loads(line)
        c = row["config"]
        if row["metric"] != "throughput_over_bound" or c["mode"] != "async" or not c["costs"]["train"]:
            continue
        k, w = c["costs"], c["workers"]
        costs = cm.Costs(rollout=k["rollout"], decode=0.0, reward=k["reward"], replay=k["train"],
                         sync_rollout=k["rollout"])
        split = cm.Split(rollout=w["rollout"], reward=w["reward"], trainer=1, reward_shared=False)
        pred = cm.predict(split, costs, 1.0, eta=c["eta"], batch=8)
        assert pred.samples_per_s / pred.bound == pytest.approx(row["value"], abs=0.11), c
        seen += 1
    assert seen == 8


def test_the_cost_row_example_in_scaling_md_loads(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")
    example = text[text.index('`{"stage": "replay"'):].split("`")[1]
    path = write_jsonl(tmp_path / "doc.jsonl", [json.loads(" ".join(example.split()))])
    (row,) = load_costs(path)
    assert (row.stage, row.seconds, row.proximal_s, row.memory_gib, row.measured) == ("replay", 62.6, 14.7, 78.0, True)

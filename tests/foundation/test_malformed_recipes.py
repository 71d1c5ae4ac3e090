"""Malformed recipes: each exits 2 through the real CLI, naming the file and the dotted key,
with no Python traceback. Every case is the valid base recipe with one change."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from foundation_helpers import BASE_RECIPE, run_cli

# (id, text to replace in the base recipe, replacement, extra CLI args, expected message part)
CASES = [
    ("unknown_table", "[store]", "[stores]", [], "stores: unknown key"),
    ("unknown_nested_key", "rank = 4", "rnak = 4", [], "model.lora.rnak: unknown key"),
    ("wrong_type", "total_steps = 5", 'total_steps = "five"', [],
     "run.total_steps: expected int, got 'five'"),
    ("bool_for_int", "num_frames = 5", "num_frames = true", [],
     "sampling.num_frames: expected int, got True"),
    ("bad_enum", 'device = "cpu"', 'device = "cpu"\ndtype = "fp8"', [],
     "model.dtype: expected one of"),
    ("negative_size", "height = 32", "height = -32", [], "sampling.height: expected int >= 16"),
    ("not_multiple_of_16", "width = 32", "width = 40", [], "sampling.width: expected int that's a multiple of 16, got 40"),
    ("negative_staleness", "max_staleness = 1", "max_staleness = -1", [],
     "pipeline.max_staleness: expected int >= 0, got -1"),
    ("missing_required", 'path = "tiny:fixture"', "", [], "model.path: required key missing"),
    ("missing_prompt_file", 'prompts = "prompts.txt"', 'prompts = "nope.txt"', [],
     "data.prompts: prompt file not found"),
    ("unknown_reward_plugin", 'name = "fixture_reward"', 'name = "fixture_rewrd"', [],
     "reward[0].name: unknown reward plugin 'fixture_rewrd'; did you mean 'fixture_reward'?"),
    ("unknown_model_plugin", 'name = "fixture_model"', 'name = "nomodel"', [],
     "model.name: unknown model plugin 'nomodel'"),
    ("unknown_stage_plugin", 'name = "fixture_stage"', 'name = "nostage"', [],
     "pipeline.stages[0].name: unknown stage plugin 'nostage'"),
    ("malformed_toml", "seed = 3", "seed = ", [], "run.seed: malformed TOML: Invalid value (line 4"),
    ("unclosed_header", "[sampling]", "[sampling", [], "sampling: malformed TOML"),
    ("duplicate_table", "[pipeline]", "[run]\n[pipeline]", [],
     "run: malformed TOML: Cannot declare table 'run' twice"),
    ("duplicate_key", "seed = 3", "seed = 3\nseed = 4", [], "run.seed: malformed TOML: Cannot overwrite"),
    # a model's own rule (Wan's VAE), checked by the model plugin
    ("bad_num_frames", "num_frames = 5", "num_frames = 6",
     ["--set", "model.name=wan22", "--set", "model.path=tiny:ti2v"],
     "sampling.num_frames: expected 4k+1 (Wan's VAE compresses time by 4), got 6; try 5"),
    ("cps_last_step", "fraction = [0.0, 0.5]", 'fraction = [0.5, 1.0]\nkernel = "cps_sde"', [],
     "sampling.sde.fraction: cps_sde cannot make the last step (7) stochastic"),
    ("cps_eta", "fraction = [0.0, 0.5]", 'fraction = [0.0, 0.5]\nkernel = "cps_sde"',
     ["--set", "sampling.eta=1.5"], "sampling.eta: cps_sde takes eta in (0, 1]"),
    ("unknown_kernel", "fraction = [0.0, 0.5]", 'fraction = [0.0, 0.5]\nkernel = "ddim"', [],
     "sampling.sde.kernel: expected one of 'cps_sde', 'dance_sde', 'flow_sde', got 'ddim'"),
    ("reversed_sde_fraction", "fraction = [0.0, 0.5]", "fraction = [0.5, 0.2]", [],
     "sampling.sde.fraction: expected lo < hi"),
    ("sde_fraction_out_of_range", "fraction = [0.0, 0.5]", "fraction = [0.0, 1.5]", [],
     "sampling.sde.fraction[1]: expected float <= 1.0, got 1.5"),
    ("sde_fraction_selects_nothing", "fraction = [0.0, 0.5]", "fraction = [0.95, 0.99]", [],
     "sampling.sde.fraction: [0.95, 0.99) selects none of the 8 steps"),
    ("nan_learning_rate", "lr = 1e-3", "lr = nan", [], "algorithm.lr: expected float > 0.0, got nan"),
    ("inf_reward_weight", "weight = 1.0", "weight = inf", [],
     "reward[0].weight: expected a finite number, got inf"),
    ("unknown_plugin_option", "capacity = 8", "capacty = 8", [], "store.options.capacty: unknown key"),
    ("plugin_option_range", "{ fraction = 0.5 }", "{ fraction = 1.5 }", [],
     "pipeline.stages[0].options.fraction: expected float <= 1.0, got 1.5"),
    ("plugin_option_type", "{ value = 2.0 }", '{ value = "high" }', [],
     "reward[0].options.value: expected float, got 'high'"),
    ("option_for_optionless_plugin", 'name = "fixture_reward"', 'name = "fixture_optionless"', [],
     "reward[0].options.value: unknown key (this plugin takes no options)"),
    ("sync_with_staleness", "max_staleness = 1", 'max_staleness = 1\nmode = "sync"', [],
     "pipeline.max_staleness: sync mode is on-policy, expected 0, got 1"),
    ("bad_device", 'device = "cpu"', 'device = "gpu0"', [], "model.device: expected auto, cpu"),
    ("vanishing_shift", "num_inference_steps = 8", "num_inference_steps = 8\nshift = 1e-300", [],
     "sampling.shift: expected float >= 0.001, got 1e-300"),
    ("cudnn_attention_on_cpu", 'device = "cpu"', 'device = "cpu"\nattention = "cudnn"', [],
     "model.attention: 'cudnn' runs bfloat16/float16 models on CUDA only (model.dtype 'float32', model.device "
     "'cpu'); use 'native'"),
    ("grpo_with_bf16_producers_fp32_trainer", 'device = "cpu"\n\n[model.lora]',
     'device = "cpu"\ndtype = "bfloat16"\n\n[model.lora]\ntrainer_dtype = "float32"', [],
     "algorithm.name: 'grpo' takes its ratio against the producers' log-probs, which differ by rounding from "
     "the trainer's (model.lora.producer_dtype = 'model', trainer_dtype = 'float32' on a bfloat16 model); "
     "use algorithm.name = 'decoupled_grpo' or the same dtype for both"),
    ("unknown_algorithm", 'name = "grpo"', 'name = "ppo"', [],
     "algorithm.name: unknown algorithm plugin 'ppo'; registered: decoupled_grpo, flow_dppo, grpo, nft, refl"),
    ("nft_with_sde_steps", 'name = "grpo"', 'name = "nft"', [],
     "sampling.sde.selection: 'fraction' makes SDE steps, but algorithm.name = 'nft' trains on the clean "
     "latents of ODE rollouts (no SDE log-probs); set sampling.sde.selection = 'none'"),
    ("grpo_without_sde_steps", "fraction = [0.0, 0.5]", 'selection = "none"', [],
     "sampling.sde.selection: 'none' samples no SDE step, but algorithm.name = 'grpo' trains on SDE log-probs"),
    ("refl_window_steps", 'name = "grpo"', 'name = "refl"\noptions = { mode = "draft_k", stesp = 2 }', [],
     "algorithm.options.stesp: unknown key"),
    ("nft_option_range", 'name = "grpo"', 'name = "nft"\noptions = { beta = 0.0 }', [],
     "algorithm.options.beta: expected float > 0.0, got 0.0"),
    ("nft_with_fsdp", "groups_per_step = 2",
     'groups_per_step = 2\n[pipeline.trainer]\nsharding = "fsdp"', ["--set", "algorithm.name=nft",
                                                                    "--set", "sampling.sde.selection=none"],
     "pipeline.trainer.sharding: algorithm 'nft' needs whole adapter parameters on every rank"),
    ("bad_run_name", 'name = "fixture"', 'name = "my run"', [], "run.name: expected str matching"),
    ("reward_not_array", "[[reward]]", "[reward]", [], "reward: expected array, got"),
    ("no_reward", "[[reward]]\nname = \"fixture_reward\"\nweight = 1.0\noptions = { value = 2.0 }", "",
     [], "reward: at least one [[reward]] table is required"),
    ("bad_set_type", "", "", ["--set", "pipeline.max_staleness=two"],
     "pipeline.max_staleness: expected int, got 'two' (from --set pipeline.max_staleness=two)"),
    ("bad_set_syntax", "", "", ["--set", "pipeline.max_staleness"], "--set 'pipeline.max_staleness': expected KEY=VALUE"),
    ("bad_set_unknown_key", "", "", ["--set", "pipeline.max_stalenes=2"],
     "pipeline.max_stalenes: unknown key"),
    ("bad_set_index", "", "", ["--set", "reward.3.weight=2"], "reward: has 1 entries, expected an index 0..0, got '3' (from --set reward.3.weight=2)"),
    ("bad_set_not_table", "", "", ["--set", "run.seed.x=1"], "run.seed: is not a table (from --set run.seed.x=1)"),
    ("negative_gpu_id", "groups_per_step = 2", "groups_per_step = 2\n[pipeline.trainer]\ngpu_ids = [-1]", [],
     "pipeline.trainer.gpu_ids: expected device indices >= 0"),
    ("resource_value_type", "groups_per_step = 2",
     'groups_per_step = 2\n[pipeline.rollout]\nresources = { node = 1.0, gpu_kind = "h100" }', [],
     "pipeline.rollout.resources.gpu_kind: expected float"),
]


def _write_case(base: Path, old: str, new: str) -> Path:
    text = BASE_RECIPE
    if old:
        assert old in text, f"case does not apply: {old!r}"
        text = text.replace(old, new, 1)
    path = base.parent / "case.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_recipe_exits_2_with_dotted_path(base_recipe: Path, case: tuple) -> None:
    _, old, new, args, expected = case
    path = _write_case(base_recipe, old, new)
    result = run_cli("validate", str(path), *args)
    assert result.code == 2, result
    assert "Traceback" not in result.text
    assert result.out == ""  # nothing half-printed on stdout
    line = result.err.strip()
    assert line.count("\n") == 0, result  # one line, no stack
    assert line.startswith(f"error: {path}: "), line
    assert expected in line, line


def test_case_ids_are_distinct_and_many() -> None:
    assert len({c[0] for c in CASES}) == len(CASES) >= 15


def test_algorithm_rollout_refusal_is_a_user_error() -> None:
    """An algorithm's rollout that cannot train on the sampling settings (found by the fuzzer:
    ReFL's draft-K steps past the schedule) exits 2 with the dotted key, no traceback."""
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "quickstart_refl.toml"
    result = run_cli("validate", str(recipe), "--set", "algorithm.options.steps=5",
                     "--set", "sampling.num_inference_steps=4")
    assert result.code == 2, result
    assert result.err == f"error: {recipe}: algorithm.options.steps: 5 > sampling.num_inference_steps (4)\n"


def test_exact_message_of_the_issue_example(base_recipe: Path) -> None:
    path = _write_case(base_recipe, "max_staleness = 1", "max_staleness = -1")
    result = run_cli("validate", str(path))
    assert result.err == f"error: {path}: pipeline.max_staleness: expected int >= 0, got -1\n"


def test_missing_recipe_file(tmp_path: Path) -> None:
    result = run_cli("validate", str(tmp_path / "absent.toml"))
    assert (result.code, result.err) == (2, f"error: {tmp_path / 'absent.toml'}: recipe file not found\n")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[run]\nname = "caf\xe9"\n'.encode("latin-1"))
    result = run_cli("validate", str(path))
    assert result.code == 2 and "not UTF-8" in result.err and "Traceback" not in result.text


def test_run_fails_on_the_same_input(base_recipe: Path) -> None:
    path = _write_case(base_recipe, "max_staleness = 1", "max_staleness = -1")
    result = run_cli("run", str(path))
    assert result.code == 2 and "pipeline.max_staleness" in result.err
    assert "Traceback" not in result.text


def console_script() -> list[str]:
    """The installed ``unirl-stream`` script (beside this interpreter, else on PATH)."""
    beside = Path(sys.executable).parent / "unirl-stream"
    found = str(beside) if beside.is_file() else shutil.which("unirl-stream")
    assert found, "the unirl-stream console script is not installed (pip install -e .)"
    return [found]


@pytest.mark.parametrize("case_id", ["unknown_nested_key", "malformed_toml", "bad_set_type", "duplicate_table"])
def test_console_script_subprocess(base_recipe: Path, fixture_plugins: Path, case_id: str) -> None:
    """The installed ``unirl-stream`` script itself (a few cases; the rest run in-process)."""
    _, old, new, args, expected = next(c for c in CASES if c[0] == case_id)
    path = _write_case(base_recipe, old, new)
    env = dict(os.environ, PYTHONPATH=str(fixture_plugins))
    proc = subprocess.run(
        [*console_script(), "validate", str(path), *args],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert expected in proc.stderr
    assert re.match(r"^error: ", proc.stderr)

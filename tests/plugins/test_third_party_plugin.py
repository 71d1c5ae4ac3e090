"""A real third-party distribution (tests/plugins/example_plugin) installed into a
throw-away virtual environment: its stage and reward show up in `unirl-stream plugins`
with their distribution and validate in a recipe, with no change to unirl-stream.

The venv sees the environment under test through a ``.pth`` file that adds this
interpreter's site-packages (``site.addsitedir``, so their own ``.pth`` files, e.g. an editable
install, apply too), while the main environment is never modified; deleting the venv
uninstalls everything. Not ``--system-site-packages``: run from inside a venv, that exposes
the *base* interpreter's packages, not the venv's.
"""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DIST = "unirl-stream-example-plugin"

RECIPE = """\
[run]
name = "plugin_check"
total_steps = 2

[model]
name = "synthetic"
path = "synthetic"

[data]
prompts = "{prompts}"

[sampling]
num_frames = 1
samples_per_prompt = 4

[[reward]]
name = "constant"
options = {{ value = 0.25 }}

[pipeline]
train_requires = ["advantage", "keep"]

[[pipeline.stages]]
name = "keep_top_fraction"
options = {{ fraction = {fraction} }}
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plugin-venv")
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    inner = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                           capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    outer = [*site.getsitepackages(), site.getusersitepackages()]
    (Path(inner) / "outer_env.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in outer) + "\n")
    # Build from a copy: pip writes build/ and *.egg-info next to the sources.
    src = shutil.copytree(HERE / "example_plugin", root / "src")
    python = env_dir / "bin" / "python"
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return python


def cli(python: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "unirl_stream.cli", *args],
        capture_output=True, text=True, timeout=300, cwd=cwd,
    )


def plugins(python: Path) -> dict[tuple[str, str], dict]:
    proc = cli(python, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    return {(r["group"], r["name"]): r for r in json.loads(proc.stdout)}


def test_plugin_is_listed_with_its_distribution(venv: Path) -> None:
    found = plugins(venv)
    assert found[("stages", "keep_top_fraction")] == {
        "group": "stages", "name": "keep_top_fraction", "distribution": DIST,
        "target": "unirl_stream_example_plugin:KeepTopFraction", "conflict": False,
    }
    assert found[("rewards", "constant")]["distribution"] == DIST
    assert found[("rewards", "jpeg_compressibility")]["distribution"] == "unirl-stream"
    table = cli(venv, "plugins")
    assert table.returncode == 0 and "keep_top_fraction" in table.stdout and DIST in table.stdout


def test_main_environment_is_untouched() -> None:
    from importlib.metadata import PackageNotFoundError, distribution

    with pytest.raises(PackageNotFoundError):
        distribution(DIST)


def _recipe(tmp_path: Path, fraction: str) -> Path:
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    path = tmp_path / "plugin.toml"
    path.write_text(RECIPE.format(prompts=prompts, fraction=fraction))
    return path


def test_plugin_validates_in_a_recipe(venv: Path, tmp_path: Path) -> None:
    proc = cli(venv, "validate", str(_recipe(tmp_path, "0.5")))
    assert proc.returncode == 0, proc.stderr
    resolved = tomllib.loads(proc.stdout)
    assert resolved["reward"][0] == {"name": "constant", "weight": 1.0, "on_nan": "fail",
                                     "options": {"value": 0.25}}
    assert resolved["pipeline"]["stages"][0]["options"] == {"fraction": 0.5}


def test_plugin_options_are_checked_by_its_config(venv: Path, tmp_path: Path) -> None:
    proc = cli(venv, "validate", str(_recipe(tmp_path, "1.5")))
    assert proc.returncode == 2
    assert "pipeline.stages[0].options.fraction: expected float <= 1.0, got 1.5" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plugin_reward_scores(venv: Path) -> None:
    code = (
        "from unirl_stream import registry\n"
        "from unirl_stream.api import Prompt\n"
        "cls = registry.load('rewards', 'constant')\n"
        "cfg = registry.decode_options(cls, {'value': 0.25}, 'x')\n"
        "print(cls(cfg).score(None, [Prompt('p:0', 'a'), Prompt('p:1', 'b')]).scores)\n"
    )
    proc = subprocess.run([str(venv), "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0.25, 0.25]"


def test_without_the_plugin_the_recipe_fails_naming_the_choices(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "unirl_stream.cli", "validate", str(_recipe(tmp_path, "0.5"))],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "reward[0].name: unknown reward plugin 'constant'" in proc.stderr
    assert "jpeg_compressibility" in proc.stderr


def test_uninstall_removes_it(venv: Path) -> None:
    proc = subprocess.run(
        [str(venv), "-m", "pip", "uninstall", "-y", "-q", DIST], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    found = plugins(venv)
    assert ("stages", "keep_top_fraction") not in found and ("rewards", "constant") not in found

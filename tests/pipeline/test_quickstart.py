"""The README's quickstart, end to end through the CLI (Ray actors, tiny Wan2.2, CPU)."""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).parents[2]
# The README's recipe at its 50 optimizer steps (~2 min on 2 cores). Shortened to 25 (~1 min) it
# gained 5.9, 3.1, 4.2 first-quarter std in three runs, but on a 2-core Intel Xeon one fresh-venv
# CI run stalled twice in a row (0.07 and 1.25 std, against the 1.5 std the learning test asks
# for): 25 steps leave too little room for how the actors interleave.
STEPS = 50


class Quickstart:
    """One real quickstart run through the CLI: its directory and its console output."""

    def __init__(self, run_dir: Path, cwd: Path) -> None:
        out = subprocess.run(
            [sys.executable, "-m", "unirl_stream.cli", "run", str(ROOT / "recipes" / "quickstart.toml"),
             "--run-dir", str(run_dir), "--no-live", "--set", f"run.total_steps={STEPS}"],
            capture_output=True, text=True, timeout=600, cwd=cwd)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        self.run_dir, self.stdout, self.stderr = run_dir, out.stdout, out.stderr

    def rewards(self) -> tuple[float, float, float]:
        """Check the ledger; return (first-quarter mean, last-quarter mean, first std)."""
        run_dir = self.run_dir
        rows = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines() if x.strip()]
        ids = [r["sample_id"] for r in rows]
        assert len(ids) == len(set(ids))
        trained = sorted((r for r in rows if r["status"] == "trained"), key=lambda r: r["trained_at_version"])
        assert len(trained) == STEPS * 16 and max(r["staleness"] for r in trained) <= 1
        assert (run_dir / "metrics.jsonl").stat().st_size > 0
        assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))[-1] == f"step_{STEPS:06d}"
        q = len(trained) // 4
        first = [r["reward"] for r in trained[:q]]
        last = [r["reward"] for r in trained[-q:]]
        return statistics.mean(first), statistics.mean(last), statistics.pstdev(first)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> Quickstart:
    """One run shared by this module's tests (a run of STEPS steps costs about 1 minute on 2 cores)."""
    tmp = tmp_path_factory.mktemp("quickstart")
    return Quickstart(tmp / "quickstart-0", tmp)


@pytest.mark.slow
def test_quickstart_trains_and_reward_rises(quickstart, tmp_path):
    # Two data-parallel trainer ranks through Ray: tests/models/test_quickstart_algorithms.py
    # (quickstart_flowdppo). Measured gains of the last over the first quarter: 0.039-0.17 kB
    # (2.4-10 first-quarter std) over 50 steps, 0.047-0.087 kB (3.1-5.9 std) over STEPS = 25;
    # which samples train at which version depends on how the actors interleave, so learning
    # speed varies between runs. The margin asks for 1.5 std and 0.02 kB, and a run that misses
    # it gets one fresh retry (a stall in both is the failure).
    results = []
    for attempt in range(2):
        # the first attempt is the module's shared run
        run = quickstart if attempt == 0 else Quickstart(tmp_path / f"quickstart-{attempt}", tmp_path)
        first, last, spread = run.rewards()
        results.append((round(first, 4), round(last, 4), round(spread, 4)))
        if last - first > max(0.02, 1.5 * spread):
            return
    pytest.fail(f"reward did not rise clearly in two runs (first mean, last mean, first std): {results}")


# Lines Ray and the model libraries print by themselves; none may reach the console.
NOISE = re.compile(r"core_worker\.cc|Token authentication|constructor arguments|\(StageActor pid=|"
                   r"\(raylet\)|Writing model shards|Loading weights|it/s\]|%\|", re.I)


@pytest.mark.slow
def test_quickstart_console_is_quiet_and_ends_with_summary(quickstart):
    console = quickstart.stdout + quickstart.stderr
    noisy = [line for line in console.splitlines() if NOISE.search(line)]
    assert not noisy, noisy[:5]
    assert quickstart.stderr == ""  # nothing on stderr at all in a run that succeeded
    block = quickstart.stdout[quickstart.stdout.index("== run finished: "):]
    fields = dict(re.findall(r"^  (\S+(?: \S+)?) +(.+)$", block, re.M))
    run_dir = quickstart.run_dir
    assert fields["samples"].startswith(f"{STEPS * 16} trained, ")
    assert re.fullmatch(rf"\d+m \d+\.\ds, {STEPS} optimizer steps", fields["duration"])
    assert re.fullmatch(r"\S+ -> \S+ \(first -> last quarter of trained samples, [+-]\S+\)", fields["reward"])
    assert fields["staleness"] == "max 1 (eta 1)"
    assert Path(fields["LoRA weights"]) == run_dir / "checkpoints" / f"step_{STEPS:06d}" / "weights.safetensors"
    assert Path(fields["report"]).is_file() and fields["open it"] == f"unirl-stream report {run_dir} --open"
    # moved, not lost: the workers' progress bars and Ray's own warnings are in RUN_DIR/logs
    logs = run_dir / "logs"
    assert any("Loading weights" in f.read_text(errors="replace") for f in logs.glob("worker-*.log"))
    assert (logs / "driver.log").is_file()


@pytest.mark.slow
def test_quickstart_writes_media_at_the_default_period(quickstart):
    run_dir = quickstart.run_dir
    rows = [json.loads(x) for x in (run_dir / "media" / "index.jsonl").read_text().splitlines()]
    # media_every = 10: versions 0..STEPS-1 train; version STEPS (after the last step) may be
    # scored too, when it is a multiple of 10
    assert set(range(0, STEPS, 10)) <= {r["version"] for r in rows} <= set(range(0, STEPS + 1, 10))
    ledger = {r["sample_id"]: r for r in map(json.loads, (run_dir / "ledger.jsonl").read_text().splitlines())}
    groups: dict[str, dict[str, dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], {})[r["rank"]] = r
        row = ledger[r["sample_id"]]
        assert row["behavior_version"] == r["version"]
        if r["version"] < STEPS:
            assert row["status"] == "trained"
            assert r["reward"] == row["reward"] and r["advantage"] == row["advantage"]
        assert r["terms"] == {"jpeg_compressibility": r["reward"]}  # one term of weight 1
        assert r["staleness"] in (0, 1) and r["prompt"]
        with Image.open(run_dir / r["anim"]) as anim:
            assert anim.n_frames == 5 and anim.size == (32, 32)
        assert (run_dir / r["poster"]).is_file()
    for ranks in groups.values():
        assert set(ranks) == {"best", "median", "worst"}
        assert ranks["best"]["reward"] >= ranks["median"]["reward"] >= ranks["worst"]["reward"]


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}"]
    return subprocess.run([shutil.which("chromium") or "chromium", *flags, *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="apt-get install -y chromium (scripts/test.sh does)")
def test_report_in_headless_chromium(quickstart, tmp_path):
    run_dir = quickstart.run_dir
    out = subprocess.run([sys.executable, "-m", "unirl_stream.cli", "report", str(run_dir), "--open"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    page = Path(out.stdout.strip())
    assert page == (run_dir / "report.html").resolve()
    html = page.read_text()
    assert not re.search(r"https?://|\b(?:src|href)=\"(?!data:)", html)  # nothing to fetch
    dom = _chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    tree = _Dom()
    tree.feed(dom.stdout)
    plots = {a["data-title"]: int(a["data-points"]) for a in tree.tags("svg") if "data-title" in a}
    assert plots["reward mean ± std (trained batches)"] == STEPS  # one point per optimizer step
    assert plots["throughput per stage"] > 0 and plots["staleness of trained samples"] > 0
    index = [json.loads(x) for x in (run_dir / "media" / "index.jsonl").read_text().splitlines()]
    shown = [a for a in tree.tags("figure") if a.get("class") == "sample"]
    versions = {int(a["data-version"]) for a in shown}
    assert {min(r["version"] for r in index), max(r["version"] for r in index)} <= versions
    rewards = {(r["version"], r["rank"], f"{r['reward']:.6g}") for r in index}
    assert all((int(a["data-version"]), a["data-rank"], a["data-reward"]) in rewards for a in shown)
    assert all(a["src"].startswith("data:image/webp;base64,") for a in tree.tags("img"))
    assert "[run]" in tree.text_of("recipe") and 'name = "quickstart"' in tree.text_of("recipe")
    shot = tmp_path / "report.png"
    res = _chromium(f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars",
                    page.as_uri(), profile=tmp_path / "profile-shot")
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        assert len(im.convert("RGB").getcolors(1 << 20) or []) > 100  # drawn, not blank


class _Dom(HTMLParser):
    """Tags with their attributes, and the text inside elements that have an id."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []
        self.texts: dict[str, str] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.found.append((tag, a))
        if tag not in ("img", "br", "meta", "line", "rect", "polyline", "polygon"):
            self._open.append(a.get("id"))

    def handle_endtag(self, tag: str) -> None:
        if self._open and tag not in ("img", "br", "meta"):
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for i in self._open:
            if i:
                self.texts[i] = self.texts.get(i, "") + data

    def tags(self, name: str) -> list[dict[str, str]]:
        return [a for t, a in self.found if t == name]

    def text_of(self, element_id: str) -> str:
        return self.texts.get(element_id, "")

"""``unirl-stream report RUN_DIR``: one self-contained HTML page about a run.

Everything is inside the file: charts are inline SVG drawn from the run's own numbers,
images and videos are ``data:`` URIs (PNG, animated WebP), the recipe is text. Nothing is
fetched when the page is viewed, so it can be mailed, archived or opened offline. It reads
only files (``monitor.summary.load_run``), so it works on a running run (a snapshot), a
finished one and a crashed one, and says what it skipped.
"""

from __future__ import annotations

import base64
import sys
import time
from html import escape
from pathlib import Path
from typing import Any, TextIO

from unirl_stream.monitor import svgplot
from unirl_stream.monitor.summary import REPORT_FILE, RunRecord, facts, load_run, summary_block

GALLERY_VERSIONS = 6  # the first, the last and evenly spaced ones between
GROUPS_PER_VERSION = 2
_RANK_ORDER = {"best": 0, "median": 1, "worst": 2}

_CSS = """
body{font-family:sans-serif;margin:24px;color:#222;max-width:1280px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ccc}
table.facts td{padding:2px 12px 2px 0;vertical-align:top}
.plots{display:flex;flex-wrap:wrap;gap:12px}
.version{margin:8px 0 14px}.version h3{font-size:14px;margin:4px 0}
.groups{display:flex;gap:28px;flex-wrap:wrap}.row{display:flex;gap:8px;margin:4px 0}
figure.sample{margin:0;width:136px;font-size:10px}
figure.sample code{word-break:break-all}
figure.sample img{width:128px;height:auto;image-rendering:pixelated;border:1px solid #999}
.prompt{font-style:italic;font-size:12px;margin:2px 0;max-width:420px}
pre{background:#f6f6f6;padding:10px;font-size:11px;overflow-x:auto}
.note{color:#a33}
"""


def _uri(path: Path) -> str:
    mime = "image/webp" if path.suffix == ".webp" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _pick_versions(versions: list[int], n: int = GALLERY_VERSIONS) -> list[int]:
    if len(versions) <= n:
        return versions
    idx = sorted({round(i * (len(versions) - 1) / (n - 1)) for i in range(n)})
    return [versions[i] for i in idx]


def _plots(rec: RunRecord) -> list[str]:
    hist, out = rec.history, []
    train = hist.train
    xs = [float(r.get("policy_version", 0)) for r in train]
    mean, std = hist.series("reward_mean"), hist.series("reward_std")
    out.append(svgplot.lines("reward mean ± std (trained batches)", {"mean": (xs, mean)},
                             "policy version", "reward",
                             band=(xs, [m - s for m, s in zip(mean, std, strict=True)], [m + s for m, s in zip(mean, std, strict=True)])))
    terms: dict[str, dict[int, float]] = {}
    for snap in hist.snapshots:  # the reward workers' running means, last value per version
        for term, v in snap.learning.reward_terms.items() if snap.staleness.policy_version >= 0 else ():
            terms.setdefault(term, {})[snap.staleness.policy_version] = v
    out.append(svgplot.lines("reward per term (reward workers)",
                             {t: ([float(k) for k in sorted(d)], [d[k] for k in sorted(d)])
                              for t, d in sorted(terms.items())}, "policy version", "term value"))
    counts: dict[int, int] = {}
    for r in rec.trained:
        counts[int(r.get("staleness", 0))] = counts.get(int(r.get("staleness", 0)), 0) + 1
    keys = list(range(max(counts, default=0) + 1))
    out.append(svgplot.bars("staleness of trained samples", [str(k) for k in keys],
                            [float(counts.get(k, 0)) for k in keys], "versions behind", "samples"))
    names = hist.stage_names()
    t = {n: hist.throughput(n) for n in names}
    out.append(svgplot.lines("throughput per stage", t, "seconds since start", "samples/s"))
    idle = {n: ([s.uptime_s for s in hist.snapshots if s.stage(n)],
                [s.stage(n).idle_frac for s in hist.snapshots if s.stage(n)]) for n in names}  # type: ignore[union-attr]
    out.append(svgplot.lines("idle fraction per stage", idle, "seconds since start", "idle share"))
    drops = rec.drops()
    out.append(svgplot.bars("dropped samples by reason", list(drops), [float(v) for v in drops.values()],
                            "reason", "samples"))
    return out


def _sample(run_dir: Path, m: dict[str, Any]) -> str:
    media = run_dir / str(m.get("anim") or m["poster"])
    if not media.is_file():
        media = run_dir / str(m["poster"])
    terms = ", ".join(f"{escape(str(k))} {float(v):.4g}" for k, v in (m.get("terms") or {}).items())
    reward = float(m.get("reward", 0.0))
    return (f'<figure class="sample" data-version="{int(m.get("version", 0))}" data-rank="{escape(str(m.get("rank")))}" '
            f'data-reward="{reward:.6g}"><img src="{_uri(media)}" alt="{escape(str(m.get("sample_id")))}">'
            f'<figcaption><b>{escape(str(m.get("rank")))}</b> reward {reward:.4g}<br>{terms}<br>'
            f'advantage {float(m.get("advantage", 0.0)):+.3g}, staleness {m.get("staleness")}<br>'
            f'<code>{escape(str(m.get("sample_id")))}</code></figcaption></figure>')


def _gallery(rec: RunRecord) -> str:
    if not rec.media:
        return "<p>No media in this run (set <code>logging.media_every</code>).</p>"
    by_version: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for m in rec.media:
        by_version.setdefault(int(m.get("version", 0)), {}).setdefault(str(m.get("group")), []).append(m)
    parts = []
    for v in _pick_versions(sorted(by_version)):
        groups = list(by_version[v].items())[:GROUPS_PER_VERSION]
        rows = []
        for group, items in groups:
            items.sort(key=lambda m: _RANK_ORDER.get(str(m.get("rank")), 3))
            rows.append(f'<div class="group"><div class="prompt">{escape(str(items[0].get("prompt", "")))} '
                        f'<code>({escape(group)})</code></div><div class="row">'
                        + "".join(_sample(rec.run_dir, m) for m in items) + "</div></div>")
        parts.append(f'<div class="version" data-version="{v}"><h3>policy version {v}</h3>'
                     f'<div class="groups">{"".join(rows)}</div></div>')
    return "".join(parts)


def render(rec: RunRecord) -> str:
    rows = facts(rec)
    table = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in rows.items())
    notes = "".join(f'<p class="note">skipped: {escape(s)}</p>' for s in rec.skipped)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    title = f"unirl-stream run {rec.run_dir.name}"
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{escape(title)}</h1>"
        f"<p>{escape(rec.state)}; report written {stamp} from {escape(str(rec.run_dir))}</p>{notes}"
        f'<h2>Summary</h2><table class="facts" id="summary">{table}</table>'
        f'<h2>Curves</h2><div class="plots" id="plots">{"".join(_plots(rec))}</div>'
        f'<h2>Gallery: best, median and worst of a group</h2><div id="gallery">{_gallery(rec)}</div>'
        f'<h2>Recipe</h2><pre id="recipe">{escape(rec.recipe_text)}</pre></body></html>\n'
    )


def write_report(run_dir: str | Path, out: Path | None = None) -> Path:
    rec = load_run(run_dir)
    out = Path(out) if out is not None else rec.run_dir / REPORT_FILE
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(rec), encoding="utf-8")
    tmp.replace(out)  # a reader never sees half a page
    return out


def end_of_run(run_dir: Path, stream: TextIO | None = None) -> None:
    """What a run ends with: write the report, print the summary block."""
    report, error = None, ""
    try:
        report = write_report(run_dir)
    except Exception as e:  # the run itself succeeded; a report problem must not fail it
        error = f"{type(e).__name__}: {e}"
    stream = stream or sys.stdout
    stream.write(summary_block(Path(run_dir), report, error))
    stream.flush()

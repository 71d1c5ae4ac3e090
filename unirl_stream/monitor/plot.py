"""``unirl-stream monitor RUN_DIR --plot out.png``: reward, throughput per stage and
staleness over time from ``metrics.jsonl`` (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

from unirl_stream.api import UserInputError
from unirl_stream.monitor.history import History, read_history


def plot_run(run_dir: str | Path, out: str | Path) -> Path:
    hist = read_history(run_dir)
    if not hist.train and not hist.snapshots:
        raise UserInputError(f"{run_dir}: metrics.jsonl has no rows yet; nothing to plot")
    out = Path(out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UserInputError(f"--plot {out}: give a .png, .pdf or .svg file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    draw(hist, out, title=_title(hist, run_dir))
    return out


def _title(hist: History, run_dir: str | Path) -> str:
    run_id = hist.last.run_id if hist.last else Path(run_dir).name
    return f"unirl-stream run {run_id}"


def draw(hist: History, out: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_t, ax_s) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    try:
        times = hist.train_times()
        mean, std = hist.series("reward_mean"), hist.series("reward_std")
        ax_r.plot(times, mean, label="reward mean", color="C0")
        ax_r.fill_between(
            times, [m - s for m, s in zip(mean, std, strict=True)], [m + s for m, s in zip(mean, std, strict=True)],
            color="C0", alpha=0.2, label="± std",
        )
        for term in sorted({k for r in hist.train for k in r.get("reward_terms", {})}):
            vals = [float(r.get("reward_terms", {}).get(term, float("nan"))) for r in hist.train]
            ax_r.plot(times, vals, linestyle="--", linewidth=1, label=term)
        ax_r.set_ylabel("reward")
        ax_r.legend(loc="best", fontsize="small")

        for name in hist.stage_names():
            xs, ys = hist.throughput(name)
            ax_t.plot(xs, ys, label=name)
        ax_t.set_ylabel("samples/s (windowed)")
        ax_t.legend(loc="best", fontsize="small")

        ax_s.plot(times, hist.series("staleness_mean"), label="mean", color="C1")
        ax_s.plot(times, hist.series("staleness_max"), label="max", color="C3", linestyle=":")
        if hist.last is not None:
            ax_s.axhline(hist.last.staleness.eta, color="grey", linewidth=0.8, label="eta")
        ax_s.set_ylabel("staleness (versions)")
        ax_s.set_xlabel("seconds since start")
        ax_s.legend(loc="best", fontsize="small")
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)

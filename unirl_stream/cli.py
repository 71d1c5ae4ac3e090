"""The ``unirl-stream`` command: run, validate, plan, plugins, monitor, reward-serve.

Exit codes: 0 ok; 2 bad input (recipe, arguments, missing weights: UserInputError and
usage errors); 1 runtime failure. Errors print one ``error: ...`` line on stderr; Python
tracebacks only with ``--debug`` (or ``UNIRL_STREAM_DEBUG=1``).

Heavy components (the pipeline driver, the monitor, reward servers) are imported inside
their commands, so ``validate``, ``plan`` and ``plugins`` start in well under a second.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from unirl_stream.api import UnirlError, UserInputError

app = typer.Typer(
    name="unirl-stream",
    help="Asynchronous streaming RL for diffusion video models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override a recipe value, typed like the file (repeatable): "
        "--set pipeline.max_staleness=2",
    ),
]
RecipeArg = Annotated[Path, typer.Argument(help="Recipe TOML file.", show_default=False)]


def _err(text: str) -> None:
    # Plain writes, not rich: recipe errors contain [brackets] that rich would eat.
    sys.stderr.write(f"{text}\n")
    sys.stderr.flush()


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version as dist_version

        typer.echo(dist_version("unirl-stream"))
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    if debug:
        _state["debug"] = True


@app.command()
def validate(recipe: RecipeArg, set_: SetOption = None) -> None:
    """Check a recipe (types, ranges, plugins, files) and print it resolved, as TOML.

    Missing model weights are a warning here (so a recipe can be checked on a machine
    without the checkpoint); `run` fails on them.
    """
    from unirl_stream.recipe import to_toml
    from unirl_stream.validate import load_checked

    loaded, warnings = load_checked(recipe, set_, check_weights=False)
    for w in warnings:
        _err(f"warning: {w}")
    sys.stdout.write(to_toml(loaded))
    sys.stdout.flush()


@app.command()
def run(
    recipe: Annotated[
        Path | None,
        typer.Argument(help="Recipe TOML file (left out with --resume: the run's saved one).", show_default=False),
    ] = None,
    set_: SetOption = None,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Run directory (default: output_dir/name-time).")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", metavar="RUN_DIR", help="Resume from a run directory's checkpoint."),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option("--address", help="Ray cluster: 'auto' or HOST:PORT (default: start a local one)."),
    ] = None,
    no_live: Annotated[bool, typer.Option("--no-live", help="No live panel; plain log lines.")] = False,
) -> None:
    """Validate RECIPE (weights included), then train; or continue a run with --resume RUN_DIR."""
    if address is not None and not _valid_address(address):
        raise UserInputError(f"--address: expected 'auto' or HOST:PORT, got {address!r}")
    if resume is not None and not resume.is_dir():
        raise UserInputError(f"--resume: run directory not found: {resume}")
    if recipe is None and resume is None:
        raise UserInputError("run: give a RECIPE file, or --resume RUN_DIR to continue a run")
    if resume is not None and run_dir is not None:
        raise UserInputError("--run-dir: not with --resume (the run continues in RUN_DIR)")
    # The driver validates the recipe it runs, once (with --resume: the saved one, after
    # taking the run directory's lock; a recipe given as well is only compared with it).
    from unirl_stream.recipe import load

    loaded = load(recipe, set_) if recipe is not None else None
    driver = importlib.import_module("unirl_stream.pipeline.driver")
    live = not no_live and (loaded.logging.live if loaded is not None else True)
    from unirl_stream.pipeline import quiet

    with quiet.verbose(_state["debug"]):  # --debug: Ray's and the libraries' output stays visible
        driver.run(recipe=loaded, run_dir=run_dir, resume=resume, address=address, live=live,
                   overrides=set_ if resume is not None else None)


def _valid_address(address: str) -> bool:
    if address == "auto":
        return True
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


@app.command()
def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List registered plugins per group, with the distribution that provides each."""
    from unirl_stream import registry

    rows = [p for group in registry.GROUPS for p in registry.info(group)]
    counts: dict[tuple[str, str], int] = {}
    for p in rows:
        counts[(p.group, p.name)] = counts.get((p.group, p.name), 0) + 1
    if as_json:
        out = [msgspec.structs.asdict(p) | {"conflict": counts[(p.group, p.name)] > 1} for p in rows]
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(out)).decode() + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for group in registry.GROUPS:
        table = Table(title=f"{group}  (entry point group unirl_stream.{group})", title_justify="left")
        table.add_column("name", no_wrap=True)
        table.add_column("distribution", no_wrap=True)
        table.add_column("target", overflow="fold")
        table.add_column("status")
        for p in (p for p in rows if p.group == group):
            dup = counts[(p.group, p.name)] > 1
            status = "[red]conflict: name registered twice[/]" if dup else "ok"
            table.add_row(p.name, p.distribution, p.target, status)
        console.print(table)


@app.command()
def monitor(
    run_dir: Annotated[
        Path, typer.Argument(exists=True, file_okay=False, help="A run directory.")
    ],
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Snapshot as JSON.")] = False,
    plot: Annotated[Path | None, typer.Option("--plot", metavar="PNG", help="Write a plot.")] = None,
) -> None:
    """Show a run's progress (live, or once) from its run directory."""
    from rich.console import Console

    console = Console()
    mod = importlib.import_module("unirl_stream.monitor.cli")
    code = mod.monitor_command(run_dir, once, as_json, plot, console)
    raise typer.Exit(int(code))


@app.command()
def plan(
    recipe: RecipeArg,
    gpus: Annotated[int, typer.Option("--gpus", help="GPUs to lay the stages out on.")],
    costs: Annotated[
        Path | None,
        typer.Option("--costs", metavar="FILE", help="JSONL cost rows (default: benchmarks/results/costs_h200.jsonl)."),
    ] = None,
    gpu_memory_gb: Annotated[float, typer.Option("--gpu-memory-gb", help="Memory of one GPU, GiB.")] = 80.0,
    model: Annotated[
        str | None, typer.Option("--model", help="Model family of the cost rows (default: from model.path).")
    ] = None,
    dp_efficiency: Annotated[
        float | None,
        typer.Option("--dp-efficiency", help="Data-parallel efficiency of a trainer group (default: assumed 0.9, "
                     "range 0.8-0.97)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Split N GPUs into rollout / reward / trainer workers from per-sample stage costs, and
    compare with one trainer and with a synchronous loop sharded over the same GPUs."""
    from unirl_stream.planning.plan import make_plan
    from unirl_stream.planning.report import as_json as plan_json
    from unirl_stream.planning.report import as_text

    made = make_plan(recipe, gpus, costs, gpu_memory_gb, model, dp_efficiency)
    sys.stdout.write(plan_json(made) if as_json else as_text(made))
    sys.stdout.flush()


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (running, finished or crashed).")],
    out: Annotated[Path | None, typer.Option("--out", help="HTML file (default: RUN_DIR/report.html).")] = None,
    open_: Annotated[bool, typer.Option("--open", help="Print the file's path; open a browser if there is one.")] = False,
) -> None:
    """Write one self-contained HTML page about a run: curves, gallery, recipe."""
    from unirl_stream.monitor.report import write_report

    path = write_report(run_dir, out)
    sys.stdout.write(f"{path.resolve()}\n" if open_ else f"report written: {path}\n")
    if open_:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())  # False without a browser: the path is printed


@app.command("reward-serve")
def reward_serve(
    reward: Annotated[str, typer.Option("--reward", help="Reward plugin name.")],
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: a free one).")] = 0,
    set_: SetOption = None,
    max_queue: Annotated[int, typer.Option("--max-queue", min=0, help="Requests admitted and waiting "
                                           "for the scorer, at most; more senders block.")] = 4,
) -> None:
    """Serve one reward model over the network for `remote` rewards of other runs."""
    from unirl_stream import registry
    from unirl_stream.tomlio import apply_overrides

    options: dict[str, Any] = {}
    apply_overrides(options, set_ or [])
    plugin = registry.load("rewards", registry.entry("rewards", reward, where="--reward").name)
    # Bad options fail here (exit 2), before anything listens: "--set options.value: ..."
    registry.decode_options(plugin, options, "--set options")
    server = importlib.import_module("unirl_stream.rewards.server")

    def ready(bound: int) -> None:  # with --port 0 this is the only way to learn the port
        sys.stdout.write(f"serving reward {reward!r} on http://{host}:{bound} (Ctrl-C stops)\n")
        sys.stdout.flush()

    server.serve(reward, options, host, port, ready=ready, max_queue=max_queue)


def _debug_default() -> bool:
    return os.environ.get("UNIRL_STREAM_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; always ends in SystemExit with the exit code."""
    _state["debug"] = _debug_default()
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="unirl-stream", standalone_mode=True)
    except SystemExit:
        raise
    except Exception as e:  # the one place errors become exit codes
        if _state["debug"]:
            traceback.print_exc()
        text = re.sub(r"\s+\Z", "", str(e)) or type(e).__name__
        if not isinstance(e, UserInputError):
            text = f"{type(e).__name__}: {text}" if type(e).__module__ == "builtins" else text
        _err(f"error: {text}")
        if not _state["debug"] and not isinstance(e, UserInputError):
            _err("(run with --debug for the traceback)")
        sys.exit(e.exit_code if isinstance(e, UnirlError) else 1)
    sys.exit(0)


if __name__ == "__main__":
    main()

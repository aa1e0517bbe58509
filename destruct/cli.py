"""The ``destruct`` command line (typer). DESIGN.md section 5.

Exit codes: 0 success, 2 a user mistake (one clear message, no traceback), 3 a stage or command
that is not built yet, 130 interrupted (run the same command again to resume).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Annotated

import click
import typer

from destruct.errors import DestructError, UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="destruct: simulate building destruction and refine it into photoreal frames.",
)
export_app = typer.Typer(no_args_is_help=True, help="Export a run to other tools.")
models_app = typer.Typer(no_args_is_help=True, help="Diffusion weights in the local cache.")
app.add_typer(export_app, name="export")
app.add_typer(models_app, name="models")


def _err(message: str) -> None:
    for i, line in enumerate(message.splitlines()):
        print(("error: " if i == 0 else "       ") + line, file=sys.stderr)


@app.command()
def run(
    shot: Annotated[
        Path | None, typer.Argument(help="shot file (default: the bundled default shot)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="run folder (default renders/<shot name>)")
    ] = None,
    stages: Annotated[
        str | None,
        typer.Option("--stages", help="comma-separated: prepare,simulate,render,refine,encode"),
    ] = None,
    frames: Annotated[
        str | None, typer.Option("--frames", help="frame range A:B, inclusive")
    ] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", help="auto, cpu or cuda (overrides sim.backend)")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="run stages again even when up to date")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="no progress bars or stage lines")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the final manifest as JSON")
    ] = False,
    ray: Annotated[
        str | None,
        typer.Option("--ray", help="farm refine windows on Ray: an address, 'auto' or 'local'"),
    ] = None,
) -> None:
    """Run the pipeline on a shot (or the bundled default shot)."""
    import destruct

    path = shot if shot is not None else destruct.default_shot_path()
    s = destruct.load_shot(path)
    quiet = quiet or as_json
    args = {"frames": frames, "backend": backend, "force": force, "quiet": quiet, "ray": ray}
    # stdout carries the --json manifest alone: what libraries print (Taichi's banner) goes to
    # stderr with the stage lines
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = _run_with_progress(s, out, stages, quiet, args)
    except DestructError as e:
        if as_json:  # a script reading stdout gets the error as JSON too (and the exit code)
            print(json.dumps({"error": str(e), "exit_code": e.exit_code}))
        raise
    if as_json:
        print(json.dumps(result.manifest, indent=2))
    elif not quiet:
        print(f"run folder: {result.run_dir}", file=sys.stderr)


def _run_with_progress(s, out, stages, quiet: bool, args: dict):
    """The pipeline under a rich progress bar on stderr (none with --quiet)."""
    from destruct.pipeline import run as run_pipeline

    if quiet:
        return run_pipeline(s, out, stages, **args)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(
        *columns, TimeRemainingColumn(), console=Console(stderr=True), transient=True
    ) as bar:
        return run_pipeline(s, out, stages, progress=bar, log=bar.console.print, **args)


@app.command()
def validate(
    shot: Annotated[Path, typer.Argument(help="shot file to check")],
    as_json: Annotated[
        bool, typer.Option("--json", help="print the resolved shot as JSON")
    ] = False,
) -> None:
    """Check a shot file: one line per problem, exit code 2 when there is any."""
    import destruct

    s = destruct.load_shot(shot)
    if as_json:
        print(json.dumps(s.to_dict(), indent=2))
    else:
        print(
            f"ok: {shot} (shot {s.shot.name!r}, {s.shot.frames} frames at {s.shot.fps:g} fps, "
            f"{s.fracture.pieces} pieces, {len(s.charges)} charges)"
        )


@app.command()
def info(
    run_dir: Annotated[Path, typer.Argument(help="run folder")],
    as_json: Annotated[bool, typer.Option("--json", help="the manifest as JSON")] = False,
) -> None:
    """Show a run's manifest: each stage's status, timing and figures."""
    from destruct.rundir import RunDir

    rd = RunDir(run_dir)
    if not rd.manifest_path.is_file():
        raise UserError(
            f"{run_dir} holds no destruct manifest.json; give a run folder (e.g. renders/default)"
        )
    m = rd.read()
    if as_json:
        print(json.dumps(m, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(f"{m.get('shot', '?')}  ({rd.root})"))
    for col in ("stage", "status", "seconds", "frames", "figures / reason"):
        t.add_column(col)
    for name, e in m.get("stages", {}).items():
        figs = ", ".join(f"{k}={_fmt(v)}" for k, v in e.get("figures", {}).items())
        cells = (name, e.get("status", ""), e.get("seconds", ""), len(e.get("frames_done", [])))
        # Text, not markup: a reason or a hand-edited name may hold "[...]"
        t.add_row(*(Text(_fmt(c or "")) for c in cells), Text(figs or _fmt(e.get("reason", ""))))
    Console().print(t)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@app.command()
def bench(
    only: Annotated[
        str | None, typer.Option("--only", help="run benchmarks whose name contains this")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="small sizes, a few minutes")] = False,
    repeat: Annotated[
        int, typer.Option("--repeat", min=1, help="repeats; the median is reported")
    ] = 1,
) -> None:
    """Run the benchmark suite from a checkout (results in benchmarks/results/)."""
    import destruct

    roots = [Path.cwd(), Path(destruct.__file__).resolve().parents[1]]
    root = next((r for r in roots if (r / "benchmarks" / "runner.py").is_file()), None)
    if root is None:
        raise UserError(
            "the benchmark suite lives in the source checkout (benchmarks/), not in the installed "
            "package: clone the destruct repository and run `destruct bench` (or `make bench`) in it"
        )
    sys.path.insert(0, str(root))
    from benchmarks.runner import main as bench_main

    bench_main(only=only, quick=quick, repeat=repeat)


@export_app.command("usd")
def export_usd(
    run_dir: Annotated[Path, typer.Argument(help="run folder")],
    out: Annotated[
        Path | None, typer.Option("--out", help="output .usdc (default RUN_DIR/scene.usdc)")
    ] = None,
) -> None:
    """Write the animated pieces, debris and camera of a run as USD."""
    from destruct.usd import export_run

    path = export_run(run_dir, out)
    print(f"wrote {path}")


@models_app.command("pull")
def models_pull(
    name: Annotated[
        str, typer.Argument(help="model set (sd15 or sdxl) or one Hub repo id org/name")
    ],
) -> None:
    """Download a recommended model set into the Hugging Face cache (needs internet; safetensors only)."""
    from refine.models import pull

    for path in pull(name):
        print(path)


@models_app.command("list")
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="as JSON")] = False,
) -> None:
    """List the recommended models and whether each is in the local cache."""
    from refine.models import list_models

    rows = list_models()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print("  ".join(f"{k}={v}" for k, v in r.items()))


@app.command()
def wedge(
    shot: Annotated[Path, typer.Argument(help="shot file")],
    sets: Annotated[
        list[str], typer.Option("--set", help="key=v1,v2 (repeatable): cartesian product")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="wedge folder (default renders/<shot>_wedge)")
    ] = None,
    stages: Annotated[
        str | None, typer.Option("--stages", help="stages to run per variant (default all)")
    ] = None,
    ray: Annotated[str | None, typer.Option("--ray", help="Ray address, 'auto' or 'local'")] = None,
) -> None:
    """Run variants of a shot (the cartesian product of --set values) and a contact sheet."""
    from destruct.wedge import run_wedge

    index = run_wedge(shot, sets, out=out, stages=stages, ray_address=ray)
    print(
        f"wedge: {len(index['variants'])} variants, index.json and contact_sheet.png in {index['folder']}"
    )


def _interrupted() -> int:
    from destruct.pipeline import INTERRUPTED

    print(INTERRUPTED, file=sys.stderr)
    return 130


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes print one clear message and exit 2, never a traceback."""
    import warnings

    # trimesh warns on the degenerate meshes that the import then refuses with a clear message
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"trimesh\.")
    # a farm manager cancels a task with SIGTERM: stop as Ctrl-C does (the stage is recorded
    # as interrupted, finished frames are kept), not silently with the stage left running
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        rv = app(args=argv, standalone_mode=False)
    except DestructError as e:
        _err(str(e))
        return e.exit_code
    except click.exceptions.UsageError as e:
        e.show()
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        return _interrupted()
    except click.exceptions.Exit as e:
        return e.exit_code
    finally:
        signal.signal(signal.SIGTERM, previous)
    if rv == 130:  # typer turns Ctrl-C into exit code 130 itself (no command returns 130)
        return _interrupted()
    return rv if isinstance(rv, int) else 0


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())

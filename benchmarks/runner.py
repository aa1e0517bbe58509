"""Run the benchmark modules, take medians over repeats, write JSON + Markdown + plots.

Results go to ``benchmarks/results/<module>.json`` and ``.md`` per module, plus
``benchmarks/results/summary.json`` / ``summary.md`` (all modules and the machine) and
``scaling.png``; quick runs go to ``benchmarks/results/quick/``. The README's benchmark table (between the ``bench:start`` / ``bench:end``
markers) is regenerated from ``summary.md``.
"""

from __future__ import annotations

import importlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def discover(only: str | None = None) -> list[str]:
    """Module names ``bench_*`` in this folder. ``only``: comma-separated names, each matching a
    module exactly (``sim`` or ``bench_sim``), or else every module containing it."""
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if only is None:
        return names
    out: set[str] = set()
    for w in (w.strip() for w in only.split(",") if w.strip()):
        exact = [n for n in names if n in (w, f"bench_{w}")]
        out.update(exact or [n for n in names if w in n])
    return sorted(out)


def _key(rec: dict[str, Any]) -> tuple:
    """Records of the same case across repeats share every non-float field."""
    return tuple(sorted((k, json.dumps(v)) for k, v in rec.items() if not isinstance(v, float)))


def medians(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per case, the median of each float field over the repeats (other fields as they are)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for records in runs:
        for r in records:
            groups.setdefault(_key(r), []).append(r)
    out = []
    for recs in groups.values():
        merged = dict(recs[0])
        for k, v in recs[0].items():
            if isinstance(v, float):
                merged[k] = statistics.median(r[k] for r in recs if k in r)
        if len(recs) > 1:
            merged["repeats"] = len(recs)
        out.append(merged)
    return out


def markdown_table(records: list[dict[str, Any]]) -> str:
    """One Markdown table over the union of the records' fields."""
    if not records:
        return "(no records)\n"
    cols: list[str] = []
    for r in records:
        cols += [k for k in r if k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        lines.append("| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def _write(path: Path, text: str) -> None:
    from destruct.io import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


def scaling_plot(results: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    """Log-log time per step against size for every record series with a size and a time.

    A series is the records of one module and name that carry ``pieces`` or ``particles`` and
    ``seconds_per_step``; the fitted exponent is shown in the legend (goal: close to 1).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for module, records in results.items():
        series: dict[str, list[tuple[float, float]]] = {}
        for r in records:
            size = r.get("pieces", r.get("particles"))
            t = r.get("seconds_per_step")
            if isinstance(size, (int, float)) and isinstance(t, float) and t > 0:
                series.setdefault(f"{module}:{r['name']}", []).append((float(size), t))
        for label, pts in series.items():
            if len(pts) < 2:
                continue
            pts.sort()
            x, y = np.array(pts).T
            k = np.polyfit(np.log(x), np.log(y), 1)[0]
            ax.loglog(x, y, "o-", label=f"{label} (exponent {k:.2f})")
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("pieces / particles")
    ax.set_ylabel("seconds per step")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def update_readme(summary_md: str) -> bool:
    """Replace the README's table between the markers; False when the markers are absent."""
    if not README.is_file():
        return False
    text = README.read_text()
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    _write(README, head + START + "\n" + summary_md + END + tail)
    return True


def main(only: str | None = None, quick: bool = False, repeat: int = 1) -> dict[str, Any]:
    """Run the selected modules; write per-module and summary results. Returns the summary.

    Full runs write to ``benchmarks/results/`` and the summary (and README table) covers every
    module's latest full results there; ``--quick`` runs write to ``benchmarks/results/quick/``
    and leave the README alone.
    """
    from benchmarks.machine import describe

    names = discover(only)
    if not names:
        raise SystemExit(f"no benchmark matches {only!r}; available: {', '.join(discover())}")
    out = RESULTS / "quick" if quick else RESULTS
    machine = describe()
    for name in names:
        mod = importlib.import_module(f"benchmarks.{name}")
        print(
            f"bench: {name} ({'quick' if quick else 'full'}, {repeat}x)",
            file=sys.stderr,
            flush=True,
        )
        t0 = time.perf_counter()
        records = medians([mod.run(quick=quick) for _ in range(repeat)])
        short = name.removeprefix("bench_")
        doc = {
            "benchmark": short,
            "quick": quick,
            "seconds": round(time.perf_counter() - t0, 2),
            "machine": machine,
            "records": records,
        }
        _write(out / f"{short}.json", json.dumps(doc, indent=2) + "\n")
        _write(out / f"{short}.md", f"# {short}\n\n" + markdown_table(records))
    results = {
        p.stem: json.loads(p.read_text())["records"]
        for p in sorted(out.glob("*.json"))
        if p.stem != "summary"
    }
    summary = {"quick": quick, "machine": machine, "results": results}
    _write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    md = [
        (
            f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
            f"memory bandwidth {machine['memory_bandwidth_gbs']} GB/s; {'quick' if quick else 'full'} sizes; "
            "each module's own JSON names the load average it ran under.\n"
        )
    ]
    for short, records in results.items():
        md.append(
            f"\n**{short}** ([{short}.json](benchmarks/results/{'quick/' if quick else ''}{short}.json))\n\n"
            + markdown_table(records)
        )
    summary_md = "".join(md)
    _write(out / "summary.md", summary_md)
    plot = scaling_plot(results, out / "scaling.png")
    if plot:
        print(f"bench: scaling plot {plot}", file=sys.stderr)
    if not quick:
        update_readme(summary_md)
    print(summary_md)
    return summary


def in_child(module: str, func: str, *args: Any) -> dict[str, Any]:
    """``benchmarks.<module>.<func>(*args)`` in a fresh interpreter, its JSON record returned:
    the case's peak resident memory is its own, and Taichi or GL start clean for it."""
    import subprocess

    call = f"{func}(*{json.dumps(list(args))})"
    code = (
        f"import json, sys; sys.path.insert(0, {str(HERE.parent)!r}); "
        f"from benchmarks.{module} import {func}; print(json.dumps({call}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=HERE.parent, check=False
    )
    if out.returncode:
        raise RuntimeError(f"{module}.{call} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def script(module_file: str) -> None:
    """``python benchmarks/bench_<name>.py [--quick]``: run that one module through :func:`main`."""
    sys.path.insert(0, str(HERE.parent))
    main(only=Path(module_file).stem, quick="--quick" in sys.argv[1:])

"""floor: the bytes the rigid solver moves per substep against this machine's memory bandwidth.

``floor_seconds = bytes_per_substep / bandwidth`` is the time a substep would take if it did
nothing but stream its tables through memory once at the measured copy bandwidth
(:func:`benchmarks.machine.memory_bandwidth_gbs`: a 256 MiB numpy copy, read + write bytes).
``floor_share = floor_seconds / seconds_per_substep`` is how close the solver comes to that
floor (1.0 = bandwidth bound; much less: the time goes to arithmetic and latency: the
narrowphase's separating-axis tests of every broadphase pair, the Gauss-Seidel sweeps, each
unit visited in order within its group).

Counting rule (:func:`substep_traffic`): one substep is the kernel launches of
World._substep_launches: ``narrowphase``, ``build_units``, ``position_sweeps`` (``iterations``
launches of ``position_sweep``, one Gauss-Seidel sweep each) and ``velocity_sweep``. For each
launch, every Taichi ndarray it takes counts its live rows x row bytes (shape x dtype size:
f64 8 B, i32 4 B) once when the kernel reads it and once more when it writes it. Live rows:
all rows of the body, shape, hull, bond and per-body list tables; the broadphase's pairs for
``pairs`` and ``pn``; the contact points found for ``cf``; this step's constraints for
``units`` and ``ulist``. Whole rows count even where a kernel reads a few columns (a 400 B
body row spans 7 cache lines; the narrowphase reads 3 of them), and a table read again
within one launch counts once (every table crosses memory once per launch, as if the cache
held nothing between launches and everything within one).

``seconds_per_substep`` is measured by difference from the same state (restored with
World.load_state): ``(t(frame step, 8 substeps) - t(frame step, 1 substep)) / 7``, so the
broadphase and the end-of-step phases, run once per step either way, cancel out. The scene
is the pile of bench_scaling (every piece in contact and awake) at 1000 and 4000 pieces.
Each launch is also timed alone (``seconds_<launch>``, with its own ``floor_share_<launch>``):
where the substep's time goes.

    python -m benchmarks --only floor [--quick]
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.bench_scaling import FPS, SUBSTEPS, _load, ndarray_bytes, pile_world

SIZES = (1000, 4000)

#: Per launch of a substep: (ndarray name in World._dev, written by the launch)
KERNELS: dict[str, tuple[tuple[str, bool], ...]] = {
    "narrowphase": (
        ("bf", False),
        ("si", False),
        ("se", False),
        ("hv", False),
        ("hp", False),
        ("he", False),
        ("pairs", True),
        ("pn", True),
        ("cf", True),
    ),
    "build_units": (
        ("bf", False),
        ("bi", False),
        ("si", False),
        ("pairs", False),
        ("bdi", False),
        ("bstart", False),
        ("blist", False),
        ("xstart", False),
        ("xlist", False),
        ("units", True),
        ("count", True),
        ("ustart", True),
        ("ulist", True),
    ),
    "position_sweep": (
        ("bf", True),
        ("bi", False),
        ("si", False),
        ("pairs", False),
        ("pn", True),
        ("cf", True),
        ("bdf", True),
        ("bdi", False),
        ("units", False),
        ("ustart", False),
        ("ulist", False),
    ),
}
KERNELS["velocity_sweep"] = KERNELS["position_sweep"]  # the same tables


def live_rows(dev: dict, npairs: int, npoints: int, nunits: int) -> dict[str, int]:
    """Rows of each device table a substep touches (see the module docstring)."""
    rows = {name: int(a.shape[0]) for name, a in dev.items() if a is not None}
    rows.update(pairs=npairs, pn=npairs, cf=npoints, units=nunits, ulist=nunits)
    return rows


def substep_traffic(
    dev: dict, npairs: int, npoints: int, nunits: int, iterations: int
) -> dict[str, int]:
    """Bytes one substep moves, per launch and in total, by the module docstring's rule.

    ``dev``: name -> Taichi ndarray (World._dev); ``npairs``: broadphase pairs; ``npoints``:
    contact points of those pairs; ``nunits``: constraints listed this step; ``iterations``:
    Gauss-Seidel sweeps of the position pass.
    """
    rows = live_rows(dev, npairs, npoints, nunits)

    def table(name: str) -> int:
        a = dev[name]
        return rows[name] * (ndarray_bytes(a) // int(a.shape[0]))

    out = {k: sum(table(n) * (2 if w else 1) for n, w in args) for k, args in KERNELS.items()}
    out["position_sweep"] *= iterations  # one launch per sweep
    out["position_sweeps"] = out.pop("position_sweep")
    return {**{f"bytes_{k}": v for k, v in out.items()}, "bytes_per_substep": sum(out.values())}


def _contact_points(w) -> int:
    """Contact points of the last substep's pairs (their counts are in pairs[:, 2])."""
    return int(w._dev["pairs"].to_numpy()[: w.last_pairs, 2].sum())


def _frame_time(w, state: dict, substeps: int) -> float:
    """Wall seconds of one frame step with ``substeps`` substeps from ``state``."""
    w.load_state(state)
    w._push()  # the upload load_state scheduled, outside the timing
    t0 = time.perf_counter()
    w.step(1 / FPS, substeps)
    return time.perf_counter() - t0


def launch_seconds(w, repeats: int) -> dict[str, float]:
    """Median wall seconds of each launch of a substep, run alone on the World's current
    tables (the launches World.step makes; ``ti.sync`` around each). It moves the
    bodies: call it last."""
    from sim_kernels.backend import ti

    calls = w._substep_launches(1 / FPS / SUBSTEPS, w.last_pairs, 2)  # a middle substep
    out = {}
    for name, call in calls.items():
        times = []
        for _ in range(repeats):
            ti.sync()
            t0 = time.perf_counter()
            call()
            ti.sync()
            times.append(time.perf_counter() - t0)
        out[name] = float(np.median(times))
    return out


def floor_case(n: int, bandwidth_gbs: float, repeats: int) -> dict:
    w = pile_world(n)
    w.step(1 / FPS, SUBSTEPS)  # upload, first contacts, pair tables sized
    state = w.state()
    t8, t1 = [], []
    for _ in range(repeats):
        t1.append(_frame_time(w, state, 1))
        t8.append(_frame_time(w, state, SUBSTEPS))  # last: the traffic below is of this step
    traffic = substep_traffic(w._dev, w.last_pairs, _contact_points(w), w.last_units, w.iterations)
    per_substep = (float(np.median(t8)) - float(np.median(t1))) / (SUBSTEPS - 1)
    floor = traffic["bytes_per_substep"] / (bandwidth_gbs * 1e9)
    launches = launch_seconds(w, repeats)
    return {
        "name": "floor_substep",
        "pieces": n,
        "pairs": int(w.last_pairs),
        "constraints": int(w.last_units),
        **traffic,
        "bandwidth_gbs": float(bandwidth_gbs),
        "seconds_per_substep": per_substep,
        "seconds_per_frame": float(np.median(t8)),
        "floor_seconds": floor,
        "floor_share": floor / per_substep,
        **{f"seconds_{k}": v for k, v in launches.items()},
        **{
            f"floor_share_{k}": traffic[f"bytes_{k}"] / (bandwidth_gbs * 1e9) / v
            for k, v in launches.items()
        },
        "load_average": float(_load()),
    }


def run(quick: bool = False) -> list[dict]:
    from benchmarks.machine import memory_bandwidth_gbs
    from sim_kernels.backend import init

    init("cpu", 0)
    bandwidth = memory_bandwidth_gbs()
    w = pile_world(8)  # compile (or load) the kernels outside the timings
    w.step(1 / FPS, SUBSTEPS)
    return [floor_case(n, bandwidth, 2 if quick else 5) for n in SIZES]


if __name__ == "__main__":
    import sys

    from benchmarks.runner import markdown_table

    print(markdown_table(run(quick="--quick" in sys.argv)))

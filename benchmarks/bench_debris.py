"""Debris benchmark (issue 5): particle updates per second for rubble and dust at 10k, 100k
and 1M particles, and the peak memory of each case.

Each case runs in a fresh interpreter, so its peak resident memory is its own and Taichi is
initialised for it alone. Rubble: bits emitted 1-9 m above the ground over a 60 m square with
400 box pieces (1.5 m) standing in it, stepped at 24 fps with 8 substeps while they fall, bounce
and settle (timed over the first simulated second: the busy part; sleeping bits cost almost
nothing: ``settled_seconds_per_step`` is measured two seconds later, with the share of bits
still awake). Dust: passive particles, one exact drag update per frame, curl noise.
``updates_per_second`` counts one particle advanced by one substep (rubble) or one frame (dust).

    python benchmarks/bench_debris.py [--quick]     # writes benchmarks/results/debris.json + .md
"""

from __future__ import annotations

SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)
FPS, SUBSTEPS, SECONDS = 24, 8, 1.0


def _case(kind: str, n: int) -> dict:
    """One measured case, in this process (called in a child interpreter by :func:`run`)."""
    import os
    import resource
    import time

    import numpy as np

    from destruct.debris import DebrisSystem, hull_planes_from_points

    _warm_up()
    per = 100  # particles per emission source
    m = n // per
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(-30, 30, m), rng.uniform(1, 9, m), rng.uniform(-30, 30, m)])
    area = np.ones(m)
    args = {
        "points": pts,
        "normals": np.tile([0.0, 1.0, 0.0], (m, 1)),
        "areas": area,
        "energies": 100.0 * area,
        "vel_a": np.zeros((m, 3)),
        "vel_b": np.zeros((m, 3)),
        "material": np.zeros(m, int),
        "time": 0.0,
    }
    t0 = time.perf_counter()
    if kind == "rubble":
        d = DebrisSystem(seed=0, max_rubble=n, max_dust=1, dust=False)
        g = np.arange(-28.5, 30, 3.0)
        cx, cz = np.meshgrid(g, g)
        pos = np.column_stack([cx.ravel(), np.full(cx.size, 0.75), cz.ravel()])
        box = np.array(
            [[x, y, z] for x in (-0.75, 0.75) for y in (-0.75, 0.75) for z in (-0.75, 0.75)]
        )
        hulls = hull_planes_from_points([box] * len(pos))
        zeros = np.zeros_like(pos)
        rot = np.tile([1.0, 0, 0, 0], (len(pos), 1))
        d.set_colliders(hulls, np.arange(len(pos)), pos, rot, zeros, zeros)
        d.emit_breaks(**args, per_break=float(per))
        live = d.live_rubble
    else:
        d = DebrisSystem(seed=0, max_rubble=0, max_dust=n)
        d.emit_breaks(**args, per_break=per / 4.0)  # 4 dust per rubble bit
        live = d.live_dust
    emit_s = time.perf_counter() - t0
    steps = int(SECONDS * FPS)
    t0 = time.perf_counter()
    for _ in range(steps):
        if kind == "rubble":
            d.set_colliders(hulls, np.arange(len(pos)), pos, rot, zeros, zeros)
        d.step(1 / FPS, SUBSTEPS)
    per_step = (time.perf_counter() - t0) / steps
    t0 = time.perf_counter()
    snap = d.snapshot()
    snap_s = time.perf_counter() - t0
    updates = live * (SUBSTEPS if kind == "rubble" else 1)
    settled = {}
    if kind == "rubble":  # two seconds later most bits sleep: what a resting pile costs
        for _ in range(2 * FPS):
            d.set_colliders(hulls, np.arange(len(pos)), pos, rot, zeros, zeros)
            d.step(1 / FPS, SUBSTEPS)
        t0 = time.perf_counter()
        for _ in range(6):
            d.set_colliders(hulls, np.arange(len(pos)), pos, rot, zeros, zeros)
            d.step(1 / FPS, SUBSTEPS)
        awake = int((d.state()["debris_rubble_i"][:, 1] == 0).sum())
        settled = {
            "settled_seconds_per_step": (time.perf_counter() - t0) / 6,
            "settled_awake_fraction": awake / max(live, 1),
        }
    return {
        "name": f"debris_{kind}",
        "particles": int(live),
        "substeps": SUBSTEPS if kind == "rubble" else 1,
        "seconds_per_step": per_step,
        "updates_per_second": updates / per_step,
        "emit_seconds": emit_s,
        "snapshot_seconds": snap_s,
        "snapshot_mib": sum(a.nbytes for a in snap.values()) / 2**20,
        **settled,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "load_average": round(os.getloadavg()[0], 2),  # other work sharing the cores
    }


def _warm_up() -> None:
    """Compile (or load from Taichi's offline cache) every kernel outside the timings."""
    import numpy as np

    from destruct.debris import DebrisSystem, hull_planes_from_points

    d = DebrisSystem(seed=0, max_rubble=10, max_dust=10)
    box = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    d.set_colliders(
        hull_planes_from_points([box]), [0], [[0, 1, 0]], [[1, 0, 0, 0]], [[0, 0, 0]], [[0, 0, 0]]
    )
    d.emit_breaks([[0, 3, 0]], [[0, 1, 0]], [1.0], [100.0], [[0, 0, 0]], [[0, 0, 0]], [0], 5.0, 0.0)
    d.step(1 / FPS, SUBSTEPS)
    d.snapshot()


def run(quick: bool = False) -> list[dict]:
    """Every case in its own interpreter; returns one record per (kind, size)."""
    from benchmarks.runner import in_child

    return [
        in_child("bench_debris", "_case", kind, n)
        for n in (QUICK_SIZES if quick else SIZES)
        for kind in ("rubble", "dust")
    ]


if __name__ == "__main__":
    import sys
    from pathlib import Path as _Path

    sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))
    from benchmarks.runner import script

    script(__file__)

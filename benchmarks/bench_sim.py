"""sim: wall time per simulated second of the destruct rigid-body solver, 250 to 4000 boxes.

Two scenes, both fully awake for the timed second (24 frames at the default 8 substeps and
8 position iterations, CPU backend, all threads):

- ``drop``: boxes (0.5 m cubes) in a loose grid fall 0.3-1 m onto the ground and onto each
  other: contact-dominated (broadphase, narrowphase every substep, contact rows).
- ``glued_wall``: a brick-bonded wall of boxes glued to its neighbours and to the ground, a
  charge at its foot: bond rows, breaking and the contacts of the pieces that come loose.
- ``default_collapse`` (full run only): the bundled default shot through the simulate stage,
  all 120 frames; ``seconds`` is the whole stage's wall time there.

Each record: ``pieces``, ``bonds``, ``seconds`` (wall seconds per simulated second),
``ms_per_frame``, the pairs the broadphase kept in the last frame, and ``per_piece_us`` (wall
microseconds per piece per frame, flat when the cost is O(n)). The first World of the process
compiles the kernels (or loads them from Taichi's offline cache); a warm-up world does that
outside the timed part. Run: ``python -m benchmarks.bench_sim [--quick]`` (writes
benchmarks/results/sim.json and sim.md only) or ``python -m benchmarks --only bench_sim``.
"""

from __future__ import annotations

import math
import time

import numpy as np

SIZES = (250, 1000, 2000, 4000)
QUICK_SIZES = (250, 1000)
FPS, SUBSTEPS = 24, 8
H = 0.25  # half size of a box [m]


def _box() -> np.ndarray:
    return np.array(
        [[sx * H, sy * H, sz * H] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    )


def drop_world(n: int):
    """n boxes in a square grid of columns, 0.75 m apart, layers 0.6 m apart from 0.55 m up."""
    from destruct.world import World

    w = World(backend="cpu")
    side = max(1, round(math.sqrt(n / 4)))
    rng = np.random.default_rng(0)
    for i in range(n):
        layer, k = divmod(i, side * side)
        x, z = divmod(k, side)
        pos = (0.75 * x, 0.55 + 0.6 * layer, 0.75 * z)
        w.add_body(_box(), density=1000.0, position=pos, angular_velocity=rng.normal(0, 0.5, 3))
    return w


def wall_world(n: int):
    """A running-bond wall of n boxes glued to their neighbours and the ground, one charge."""
    from destruct.world import World

    w = World(backend="cpu")
    rows = max(1, round(math.sqrt(n / 2)))
    cols = -(-n // rows)
    index, xs = {}, {}
    for i in range(n):
        r, c = divmod(i, cols)
        xs[r, c] = 2 * H * c + (H if r % 2 else 0.0)
        index[r, c] = w.add_body(_box(), density=1800.0, position=(xs[r, c], H + 2 * H * r, 0.0))
    strengths = (2e5, 3e5, 3e6)  # tensile, shear, compressive [Pa]: weak mortar
    for (r, c), a in index.items():
        y = 2 * H * r
        if (r, c + 1) in index:
            w.add_bond(
                a, index[r, c + 1], (xs[r, c] + H, y + H, 0), (1, 0, 0), 4 * H * H, *strengths
            )
        if r == 0:
            w.add_bond(a, -1, (xs[r, c], 0, 0), (0, -1, 0), 4 * H * H, *strengths)
        for c2 in (c - 1, c, c + 1):  # the boxes above that overlap this one
            if (r + 1, c2) in index and abs(xs[r + 1, c2] - xs[r, c]) < 2 * H - 1e-9:
                dx = abs(xs[r + 1, c2] - xs[r, c])
                mid = 0.5 * (xs[r + 1, c2] + xs[r, c])
                w.add_bond(
                    a,
                    index[r + 1, c2],
                    (mid, y + 2 * H, 0),
                    (0, 1, 0),
                    (2 * H - dx) * 2 * H,
                    *strengths,
                )
    w.apply_charge((cols * H, 0.5, -0.6), radius=2.0, impulse=2e4)
    return w


def _time(w, seconds: float = 1.0) -> dict:
    w.step(1 / FPS, SUBSTEPS)  # upload, first contacts
    frames = round(seconds * FPS)
    t0 = time.perf_counter()
    for _ in range(frames):
        w.step(1 / FPS, SUBSTEPS)
    wall = time.perf_counter() - t0
    return {
        "seconds": round(wall / seconds, 3),
        "ms_per_frame": round(1000 * wall / frames, 1),
        "pairs": int(w.last_pairs),
        "awake": int((~w.sleeping()).sum()),
    }


def default_collapse() -> dict:
    """The bundled default shot (about 800 pieces, two charges) through the simulate stage,
    debris off: its 120 frames (5 s) plus the pre-roll, wall clock."""
    import tempfile
    from pathlib import Path

    import destruct
    from destruct.fracture import write_fracture
    from destruct.rundir import RunDir
    from destruct.shot import shot_from_dict
    from destruct.simulate import run_simulate
    from destruct.stages import Stage, StageContext

    shot = destruct.load_shot(destruct.default_shot_path())
    data = shot.model_dump()
    data["debris"]["enabled"] = False
    data["sim"]["backend"] = "cpu"
    shot = shot_from_dict(data)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        write_fracture(destruct.prepare(shot), run / "fracture")
        frames = list(range(shot.shot.start_frame, shot.shot.start_frame + shot.shot.frames))
        ctx = StageContext(
            shot=shot, run=RunDir(run), stage=Stage.SIMULATE, frames=frames, quiet=True
        )
        t0 = time.perf_counter()
        fig = run_simulate(ctx)
        wall = time.perf_counter() - t0
    return {
        "name": "sim_default_collapse",
        "pieces": fig["pieces"],
        "bonds": fig["bonds"],
        "seconds": round(wall, 2),
        "ms_per_frame": round(1000 * wall / len(frames), 1),
        "frames": len(frames),
        "bonds_broken": fig["bonds_broken"],
        "peak_speed": fig["peak_speed"],
        "substeps": fig["substeps"],
    }


def run(quick: bool = False) -> list[dict]:
    from sim_kernels.backend import init

    arch = init("cpu", 0)
    _time(drop_world(8), 1 / FPS)  # compile (or load) every kernel outside the timed part
    records = []
    for n in QUICK_SIZES if quick else SIZES:
        for name, make in (("drop", drop_world), ("glued_wall", wall_world)):
            w = make(n)
            r = _time(w)
            records.append(
                {
                    "name": f"sim_{name}",
                    "pieces": n,
                    "bonds": int(w.num_bonds),
                    **r,
                    "per_piece_us": round(1e6 * r["seconds"] / FPS / n, 2),
                    "substeps": SUBSTEPS,
                    "iterations": int(w.iterations),
                    "backend": arch,
                }
            )
    if not quick:
        records.append(default_collapse())
    return records


if __name__ == "__main__":
    import sys
    from pathlib import Path as _Path

    sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))
    from benchmarks.runner import script

    script(__file__)

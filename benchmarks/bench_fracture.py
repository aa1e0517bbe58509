"""Fracture time of the prepare stage (issue 3): the default building into about 800 pieces.

Target: under 15 s on the 2-core development machine. Records the phases (seeds, Voronoi
cells, pieces with hulls and mass properties, bonds) and the thread count, serial against
threaded, so the effect of manifold3d releasing the GIL is measured, not assumed. Run as a
script to write ``benchmarks/results/fracture.json`` / ``.md``.
"""

from __future__ import annotations

import os
import time


def _case(shot, name: str, threads: int) -> dict:
    from destruct.fracture import prepare

    shot.sim.threads = threads
    t0 = time.perf_counter()
    scene = prepare(shot)
    seconds = time.perf_counter() - t0
    return {
        "name": name,
        "pieces": len(scene.pieces),
        "threads": threads,
        "seconds": round(seconds, 3),
        **{k: round(v, 3) for k, v in scene.timings.items()},
        "bonds": len(scene.bonds),
        "ground_bonds": scene.ground_bonds,
        "hulls": sum(len(p.hulls) for p in scene.pieces),
        "volume_error": float(scene.volume_error),
        # other work on the machine slows every phase; the 1-minute load says how busy it was
        "load_average": round(os.getloadavg()[0], 2),
    }


def run(quick: bool = False) -> list[dict]:
    """The bundled default shot's building (6 floors, 3 x 2 bays, windows), 800 pieces, with 1
    thread and with all cores; quick: 200 pieces."""
    import destruct.fracture  # noqa: F401  (imports are not part of the timed body)
    from destruct import default_shot_path, load_shot

    shot = load_shot(default_shot_path())
    if quick:
        shot.fracture.pieces = 200
    cores = os.cpu_count() or 1
    records = [_case(shot, "default_building", 1)]
    if cores > 1:
        records.append(_case(shot, "default_building", cores))
    return records


if __name__ == "__main__":
    from benchmarks.runner import main

    main(only="bench_fracture")

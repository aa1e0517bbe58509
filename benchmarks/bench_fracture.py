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
    thread and with all cores, and two high-poly imported meshes (convex, concave); quick: 200
    pieces, no import."""
    import destruct.fracture  # noqa: F401  (imports are not part of the timed body)
    from destruct import default_shot_path, load_shot

    shot = load_shot(default_shot_path())
    if quick:
        shot.fracture.pieces = 200
    cores = os.cpu_count() or 1
    records = [_case(shot, "default_building", 1)]
    if cores > 1:
        records.append(_case(shot, "default_building", cores))
    if not quick:
        records += [_imported_sphere(cores), _imported_tube(cores)]
    return records


def _imported_sphere(threads: int) -> dict:
    """A high-poly import: an 81,920-triangle sphere (PLY), 100 pieces. Every cell is a
    manifold3d boolean with the whole mesh (its cost grows with the triangle count)."""
    import tempfile
    from pathlib import Path

    import trimesh

    from destruct.shot import shot_from_dict

    with tempfile.TemporaryDirectory() as tmp:
        trimesh.creation.icosphere(subdivisions=6, radius=3.0).export(Path(tmp) / "ball.ply")
        shot = shot_from_dict(
            {"building": {"mesh": "ball.ply"}, "fracture": {"pieces": 100}}, Path(tmp)
        )
        return {**_case(shot, "imported_sphere_81920_tris", threads), "triangles": 81920}


def _imported_tube(threads: int) -> dict:
    """A finely tessellated concave import: a 512-sided thick tube (16,384 triangles, PLY),
    50 pieces, each an arc whose hull bulges into the tube's hollow: what its compound of
    hulls costs (``hulls``: at most 2^HULL_MAX_DEPTH = 8 a piece)."""
    import tempfile
    from pathlib import Path

    import trimesh

    from destruct.shot import shot_from_dict

    tube = trimesh.creation.annulus(r_min=4.0, r_max=5.0, height=8.0, sections=512).subdivide()
    with tempfile.TemporaryDirectory() as tmp:
        tube.export(Path(tmp) / "tube.ply")
        shot = shot_from_dict(
            {"building": {"mesh": "tube.ply", "up": "z"}, "fracture": {"pieces": 50}}, Path(tmp)
        )
        return {**_case(shot, "imported_tube_16384_tris", threads), "triangles": len(tube.faces)}


if __name__ == "__main__":
    from benchmarks.runner import main

    main(only="bench_fracture")

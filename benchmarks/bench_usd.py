"""USD export time (issue 8): a synthetic run of box pieces, rubble and dust -> scene.usdc.

The default run's size is 800 pieces x 120 frames. :func:`synthetic_run` writes such a run
(shot.toml, fracture/pieces.npz, sim/frame.*.npz in the formats of docs/FORMATS.md) and is also
what ``tests/test_usd.py`` exports. Run as a script to write ``benchmarks/results/usd.json``/``.md``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _quat_about(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """(n, 4) wxyz rotations by ``angle`` (n,) about unit ``axis`` (n, 3)."""
    half = angle[:, None] / 2.0
    return np.concatenate([np.cos(half), np.sin(half) * axis], axis=1)


def synthetic_run(
    folder: str | Path,
    *,
    pieces: int = 4,
    frames: int = 4,
    fps: float = 24.0,
    start_frame: int = 1001,
    rubble: int = 5,
    dust: int = 7,
    time_scale: float = 1.0,
    camera: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write a run folder: ``pieces`` boxes on a row (sizes vary), falling and tumbling for
    ``frames`` frames; up to ``rubble`` rubble bits (ids change: some die, some are born) and a
    dust count that grows by frame. Returns the folder."""
    import trimesh

    from destruct.io import save_npz
    from destruct.shot import shot_from_dict

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    shot = {
        "shot": {
            "name": "usdtest",
            "fps": fps,
            "frames": frames,
            "start_frame": start_frame,
            "seed": seed,
        },
        "sim": {"time_scale": time_scale},
        "camera": camera
        or {"position": [3.0, 2.0, 12.0], "look_at": [1.5, 1.0, 0.0], "focal_mm": 35.0},
    }
    (folder / "shot.toml").parent.mkdir(parents=True, exist_ok=True)
    (folder / "shot.toml").write_text(shot_from_dict(shot, folder).to_toml())

    names, verts, faces, interior, com, vo, fo = [], [], [], [], [], [0], [0]
    for i in range(pieces):
        ext = 0.3 + 0.4 * rng.random(3)
        box = trimesh.creation.box(extents=ext)
        names.append(f"wall_{i // 100:02d}.piece_{i % 100:04d}")
        verts.append(np.asarray(box.vertices, dtype=np.float32))
        faces.append(np.asarray(box.faces, dtype=np.int32))
        flags = np.zeros(len(box.faces), dtype=bool)
        flags[[2 * (i % 6), 2 * (i % 6) + 1]] = True  # one side of the box is a fracture face
        interior.append(flags)
        com.append([0.8 * (i % 40), 0.5 + 0.8 * (i // 40), 0.0])
        vo.append(vo[-1] + len(box.vertices))
        fo.append(fo[-1] + len(box.faces))
    com = np.asarray(com, dtype=np.float64)
    save_npz(
        folder / "fracture" / "pieces.npz",
        "destruct.pieces/1",
        names=np.array(names),
        element=np.array([n.split(".")[0] for n in names]),
        kind=np.array(["wall"] * pieces),
        material=(np.arange(pieces) % 2).astype(np.int32),
        material_names=np.array(["concrete", "brick"]),
        com=com,
        vert_offset=np.array(vo, dtype=np.int64),
        vertices=np.concatenate(verts),
        face_offset=np.array(fo, dtype=np.int64),
        faces=np.concatenate(faces),
        face_interior=np.concatenate(interior),
    )

    axis = rng.normal(size=(pieces, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    spin = rng.uniform(0.5, 3.0, pieces)  # rad/s
    drift = rng.normal(scale=0.5, size=(pieces, 3))
    r_axis = rng.normal(size=(4 * rubble + 4, 3))
    r_axis /= np.linalg.norm(r_axis, axis=1, keepdims=True)
    for k in range(frames):
        t = k / fps * time_scale
        pos = com + drift * t + np.array([0.0, -4.905, 0.0]) * t * t
        rot = _quat_about(axis, spin * t)
        ids = np.arange(k, k + rubble, dtype=np.int32)  # bit k dies, bit k + rubble is born
        n_dust = dust + 2 * k
        save_npz(
            folder / "sim" / f"frame.{start_frame + k:04d}.npz",
            "destruct.sim/1",
            frame=np.int64(start_frame + k),
            time=np.float64(k / fps),
            position=pos.astype(np.float32),
            rotation=rot.astype(np.float32),
            velocity=(drift + np.array([0.0, -9.81, 0.0]) * t).astype(np.float32),
            angular_velocity=(axis * spin[:, None]).astype(np.float32),
            bond_broken=np.zeros(0, dtype=bool),
            bond_damage=np.zeros(0, dtype=np.float32),
            kinetic_energy=np.float64(0.0),
            rubble_id=ids,
            rubble_position=(
                np.stack([ids * 0.3, 0.2 + 0.01 * k + 0 * ids, 0.5 + 0 * ids], axis=1)
            ).astype(np.float32),
            rubble_rotation=_quat_about(r_axis[ids], 2.0 * t + 0.1 * ids).astype(np.float32),
            rubble_velocity=np.tile([0.0, 0.24, 0.0], (rubble, 1)).astype(np.float32),
            rubble_radius=(0.05 + 0.01 * (ids % 3)).astype(np.float32),
            rubble_material=(ids % 2).astype(np.int32),
            dust_position=rng.uniform(-1, 5, size=(n_dust, 3)).astype(np.float32),
            dust_velocity=rng.normal(0, 0.5, size=(n_dust, 3)).astype(np.float32),
            dust_radius=np.full(n_dust, 0.2, dtype=np.float32),
            dust_alpha=np.linspace(1.0, 0.1, n_dust).astype(np.float32),
        )
    return folder


def run(quick: bool = False) -> list[dict]:
    """Export time of a synthetic run (800 pieces x 120 frames, the default shot's size)."""
    from destruct.usd import export_run

    cases = [(100, 24)] if quick else [(200, 120), (800, 120)]
    records = []
    with tempfile.TemporaryDirectory() as tmp:  # load pxr, its plugins, numba and trimesh once
        t0 = time.perf_counter()
        export_run(synthetic_run(Path(tmp) / "warmup", pieces=1, frames=1))
        records.append(
            {"name": "usd_first_export_1_piece", "seconds": round(time.perf_counter() - t0, 3)}
        )
    for pieces, frames in cases:
        with tempfile.TemporaryDirectory() as tmp:
            folder = synthetic_run(
                Path(tmp) / "run", pieces=pieces, frames=frames, rubble=500, dust=2000
            )
            t0, c0 = time.perf_counter(), time.process_time()
            out = export_run(folder)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            records.append(
                {
                    "name": "usd_export",
                    "pieces": pieces,
                    "frames": frames,
                    "rubble_per_frame": 500,
                    "seconds": round(seconds, 3),
                    "cpu_seconds": round(cpu, 3),
                    "ms_per_frame": round(1000.0 * seconds / frames, 2),
                    "file_mb": round(out.stat().st_size / 2**20, 2),
                }
            )
    return records


if __name__ == "__main__":
    import sys
    from pathlib import Path as _Path

    sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))
    from benchmarks.runner import script

    script(__file__)

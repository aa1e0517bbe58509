"""Tiny synthetic fracture/ and sim/ artifacts for the render tests (docs/FORMATS.md keys)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from destruct.io import save_npz


def box_pieces(centers, sizes, materials=None, material_names=("concrete",), interior=None) -> dict:
    """pieces.npz arrays for axis-aligned boxes (each a piece, local frame centred on its com)."""
    verts, faces, voff, foff, fint = [], [], [0], [0], []
    for i, (c, s) in enumerate(zip(centers, sizes)):
        m = trimesh.creation.box(extents=s)
        verts.append(np.asarray(m.vertices, np.float32))
        faces.append(np.asarray(m.faces, np.int32))
        voff.append(voff[-1] + len(m.vertices))
        foff.append(foff[-1] + len(m.faces))
        fi = np.zeros(len(m.faces), bool)
        if interior is not None and interior[i]:
            fi[:] = True
        fint.append(fi)
    P = len(centers)
    names = np.array([f"wall_{i // 10:02d}.piece_{i:04d}" for i in range(P)])
    return {
        "names": names,
        "element": np.array([n.split(".")[0] for n in names]),
        "kind": np.array(["wall"] * P),
        "material": np.asarray(materials if materials is not None else np.zeros(P), np.int32),
        "material_names": np.array(material_names),
        "volume": np.array([np.prod(s) for s in sizes], np.float64),
        "mass": np.array([2400 * np.prod(s) for s in sizes], np.float64),
        "com": np.asarray(centers, np.float64),
        "inertia": np.tile(np.eye(3), (P, 1, 1)),
        "vert_offset": np.array(voff, np.int64),
        "vertices": np.concatenate(verts),
        "face_offset": np.array(foff, np.int64),
        "faces": np.concatenate(faces),
        "face_interior": np.concatenate(fint),
        "hull_piece": np.arange(P, dtype=np.int32),
        "hull_offset": np.array(voff, np.int64),
        "hull_vertices": np.concatenate(verts),
        "origin": np.zeros(3),
    }


def sim_frame(
    frame: int, positions, rotations=None, *, time=0.0, n_bonds=0, rubble=None, dust=None
) -> dict:
    P = len(positions)
    rot = np.tile([1.0, 0, 0, 0], (P, 1)) if rotations is None else np.asarray(rotations)
    d = {
        "frame": np.int64(frame),
        "time": np.float64(time),
        "position": np.asarray(positions, np.float32),
        "rotation": rot.astype(np.float32),
        "velocity": np.zeros((P, 3), np.float32),
        "angular_velocity": np.zeros((P, 3), np.float32),
        "bond_broken": np.zeros(n_bonds, bool),
        "bond_damage": np.zeros(n_bonds, np.float32),
        "kinetic_energy": np.float64(0.0),
        "rubble_id": np.zeros(0, np.int32),
        "rubble_position": np.zeros((0, 3), np.float32),
        "rubble_rotation": np.zeros((0, 4), np.float32),
        "rubble_velocity": np.zeros((0, 3), np.float32),
        "rubble_radius": np.zeros(0, np.float32),
        "rubble_material": np.zeros(0, np.int32),
        "dust_position": np.zeros((0, 3), np.float32),
        "dust_radius": np.zeros(0, np.float32),
        "dust_alpha": np.zeros(0, np.float32),
    }
    if rubble is not None:
        d.update({f"rubble_{k}": np.asarray(v) for k, v in rubble.items()})
    if dust is not None:
        d.update({f"dust_{k}": np.asarray(v) for k, v in dust.items()})
    return d


def write_run(
    run_dir: Path, pieces: dict, frames: dict[int, dict], bonds: dict | None = None
) -> None:
    run_dir = Path(run_dir)
    save_npz(run_dir / "fracture" / "pieces.npz", "destruct.pieces/1", **pieces)
    if bonds is not None:
        save_npz(run_dir / "fracture" / "bonds.npz", "destruct.bonds/1", **bonds)
    for f, d in frames.items():
        save_npz(run_dir / "sim" / f"frame.{f:04d}.npz", "destruct.sim/1", **d)

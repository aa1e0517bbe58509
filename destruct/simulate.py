"""The ``simulate`` stage: ``fracture/`` -> ``sim/`` (DESIGN.md sections 2 and 6).

Reads ``fracture/pieces.npz`` and ``bonds.npz`` (docs/FORMATS.md), builds a
:class:`~destruct.world.World` (one rigid body per piece from its convex hulls, one glue bond
per bonds.npz row; rows bonded to ``-1`` glue a piece to the ground when
``sim.anchor_to_ground``), lets it settle for ``sim.preroll`` seconds, then steps one frame at a
time at ``shot.fps`` (each frame advances ``sim.time_scale / fps`` seconds of simulation) and
writes ``sim/frame.<f:04d>.npz`` per frame, ``sim/state.<f:04d>.npz`` every
``sim.checkpoint_every`` frames and ``sim/breaks.npz`` at the end.

Art direction, all in simulation seconds after the first frame: charges fire in the step that
reaches their time (radial impulse with falloff, bonds inside the radius destroyed), regions
weaken the bonds inside their box from their start on, impactors are kinematic spheres moving
linearly between their keys.

A run that finds frames and a checkpoint from an earlier (killed) run continues from the
last checkpoint whose frames all exist; since the state is restored bit for bit, the frames it
writes equal those of one clean run. Non-finite state or kinetic energy above twice the energy
available (potential energy above the lowest piece + charges + impactors) stops the run with a
message naming the frame; the frames already written stay valid.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from destruct.errors import UserError
from destruct.io import load_npz, save_npz

if TYPE_CHECKING:
    from destruct.shot import Shot
    from destruct.stages import StageContext
    from destruct.world import World

SIM_FORMAT = "destruct.sim/1"
STATE_FORMAT = "destruct.simstate/1"
BREAKS_FORMAT = "destruct.breaks/1"
PIECES_FORMAT = "destruct.pieces/1"
BONDS_FORMAT = "destruct.bonds/1"
OVERLAP_TOLERANCE = 1e-3  # m: pieces overlapping more than this at the start never collide
GROUND_FRICTION = 0.8  # rough ground (concrete on soil)
IMPACTOR_SUBDIVISIONS = 2  # icosphere of 162 vertices for a sphere impactor
MOVED = 0.05  # m: a piece that ends further than this from its start counts as moved
ENERGY_FACTOR = 2.0  # blow-up guard: kinetic energy may not exceed this x the energy available


@dataclass
class SimRecord:
    """What the stage carries between frames (and through checkpoints) besides the World."""

    bonds: list[int] = field(default_factory=list)  # broken bond indices, in break order
    frames: list[int] = field(default_factory=list)  # frame of each break
    times: list[float] = field(default_factory=list)  # shot time of that frame [s]
    peak_speed: float = 0.0  # [m/s]
    peak_kinetic_energy: float = 0.0  # [J]

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "breaks_bond": np.asarray(self.bonds, dtype=np.int32),
            "breaks_frame": np.asarray(self.frames, dtype=np.int64),
            "breaks_time": np.asarray(self.times, dtype=np.float64),
            "peaks": np.array([self.peak_speed, self.peak_kinetic_energy]),
        }

    @classmethod
    def from_arrays(cls, d: dict[str, np.ndarray]) -> SimRecord:
        return cls(
            d["breaks_bond"].tolist(),
            d["breaks_frame"].tolist(),
            d["breaks_time"].tolist(),
            float(d["peaks"][0]),
            float(d["peaks"][1]),
        )


def frame_path(sim_dir: Path, frame: int) -> Path:
    return sim_dir / f"frame.{frame:04d}.npz"


def state_path(sim_dir: Path, frame: int) -> Path:
    return sim_dir / f"state.{frame:04d}.npz"


# ---- building the world ------------------------------------------------------------------------


def piece_hulls(pieces: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
    """Each piece's convex hulls (lists of (k, 3) float64 point arrays in its local frame)."""
    n = len(pieces["mass"])
    off = pieces["hull_offset"]
    verts = pieces["hull_vertices"].astype(np.float64)
    hulls: list[list[np.ndarray]] = [[] for _ in range(n)]
    for h, p in enumerate(pieces["hull_piece"]):
        hulls[int(p)].append(verts[off[h] : off[h + 1]])
    empty = [i for i, hs in enumerate(hulls) if not hs]
    if empty:
        raise UserError(
            f"fracture/pieces.npz: piece {empty[0]} has no collision hull; re-run "
            "prepare with --force"
        )
    return hulls


def build_world(
    pieces: dict[str, np.ndarray],
    bonds: dict[str, np.ndarray],
    materials: list[Any],
    *,
    gravity: Any = (0.0, -9.81, 0.0),
    ground: bool = True,
    anchor_to_ground: bool = True,
    impactors: list[Any] = (),
    backend: str = "cpu",
    threads: int = 0,
    seed: int = 0,
) -> tuple[World, list[int]]:
    """A World with one body per piece (same order), one bond per bonds.npz row (same order) and
    the kinematic impactors after the pieces; returns it and the impactors' body indices.

    ``materials``: per material id (pieces["material"]), an object with ``friction`` and
    ``restitution``. Ground bonds (second index -1) are broken from the start without
    ``anchor_to_ground`` (so bond indices keep matching bonds.npz).
    """
    from destruct.world import World

    w = World(
        gravity=gravity,
        ground=ground,
        ground_friction=GROUND_FRICTION,
        backend=backend,
        seed=seed,
        threads=threads,
    )
    mat = pieces["material"]
    for i, hulls in enumerate(piece_hulls(pieces)):
        m = materials[int(mat[i])]
        w.add_body(
            hulls,
            position=pieces["com"][i],
            mass=float(pieces["mass"][i]),
            inertia=pieces["inertia"][i],
            friction=m.friction,
            restitution=m.restitution,
        )
    pairs = bonds["pairs"]
    for k in range(len(pairs)):
        w.add_bond(
            int(pairs[k, 0]),
            int(pairs[k, 1]),
            bonds["points"][k],
            bonds["normals"][k],
            float(bonds["areas"][k]),
            float(bonds["tensile"][k]),
            float(bonds["shear"][k]),
            float(bonds["compressive"][k]),
        )
    w.exclude_overlaps(OVERLAP_TOLERANCE)
    if not anchor_to_ground and len(pairs):
        w.break_bonds(np.flatnonzero(pairs[:, 1] < 0))
        w.new_breaks()  # not breaks of the simulation
    ids = []
    for imp in impactors:
        import trimesh

        ball = trimesh.creation.icosphere(subdivisions=IMPACTOR_SUBDIVISIONS, radius=imp.radius)
        ids.append(
            w.add_body(
                np.asarray(ball.vertices),
                position=imp.keys[0].position,
                kinematic=True,
                friction=0.5,
                restitution=0.1,
            )
        )
    return w, ids


def impactor_motion(keys: list[Any], t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
    """Position at t0 and the constant velocity that reaches the keyed position at t1.

    Keys are linear in between, held before the first and after the last.
    """
    times = np.array([k.time for k in keys], dtype=np.float64)
    pos = np.array([k.position for k in keys], dtype=np.float64)

    def at(t: float) -> np.ndarray:
        return np.array([np.interp(t, times, pos[:, c]) for c in range(3)])

    p0 = at(t0)
    return p0, (at(t1) - p0) / (t1 - t0)


# ---- the stage ---------------------------------------------------------------------------------


class _Frames:
    """Shot frames <-> simulation time."""

    def __init__(self, shot: Shot):
        self.start = int(shot.shot.start_frame)
        self.fps = float(shot.shot.fps)
        self.dt = float(shot.sim.time_scale) / self.fps  # simulation seconds per frame

    def sim_time(self, frame: int) -> float:
        return (frame - self.start) * self.dt

    def shot_time(self, frame: int) -> float:
        return (frame - self.start) / self.fps


def _materials(pieces: dict[str, np.ndarray], shot: Shot) -> list[Any]:
    from destruct.fracture import material_overrides
    from destruct.materials import resolve

    overrides = material_overrides(shot)
    return [resolve(str(name), overrides) for name in pieces["material_names"]]


def _resume_point(sim_dir: Path, first: int, last: int, key: str) -> tuple[int | None, dict]:
    """The latest checkpoint frame in [first, last] whose frames first..it all exist and that
    was made from the same inputs (``key``, the stage's inputs hash), with its arrays; (None,
    {}) when there is none. A checkpoint of other inputs (the shot changed since) or one that
    no longer reads (a damaged file) is passed over: the run starts further back."""
    found = []
    for p in sim_dir.glob("state.*.npz"):
        m = re.fullmatch(r"state\.(\d+)\.npz", p.name)
        if m and first <= int(m.group(1)) <= last:
            found.append(int(m.group(1)))
    for f in sorted(found, reverse=True):
        if not all(frame_path(sim_dir, g).is_file() for g in range(first, f + 1)):
            continue
        try:
            st = load_npz(state_path(sim_dir, f), STATE_FORMAT)
        except UserError:
            continue
        if str(st.pop("inputs_hash", "")) == key:
            return f, st
    return None, {}


def _empty_debris() -> dict[str, np.ndarray]:
    f32, i32 = np.float32, np.int32
    return {
        "rubble_id": np.zeros(0, i32),
        "rubble_position": np.zeros((0, 3), f32),
        "rubble_rotation": np.zeros((0, 4), f32),
        "rubble_velocity": np.zeros((0, 3), f32),
        "rubble_radius": np.zeros(0, f32),
        "rubble_material": np.zeros(0, i32),
        "dust_position": np.zeros((0, 3), f32),
        "dust_velocity": np.zeros((0, 3), f32),
        "dust_radius": np.zeros(0, f32),
        "dust_alpha": np.zeros(0, f32),
        "rubble_age": np.zeros(0, f32),
        "dust_age": np.zeros(0, f32),
    }


def run_simulate(ctx: StageContext) -> dict[str, Any]:
    """The stage entry point: simulate the shot's frames into sim/. Returns the figures."""
    t_start = time.perf_counter()
    shot = ctx.shot
    pieces = load_npz(ctx.path("fracture", "pieces.npz"), PIECES_FORMAT)
    bonds = load_npz(ctx.path("fracture", "bonds.npz"), BONDS_FORMAT)
    sim_dir = ctx.path("sim", "frame.0000.npz").parent
    fr = _Frames(shot)
    first = fr.start
    last = max(ctx.frames) if ctx.frames else fr.start + int(shot.shot.frames) - 1
    materials = _materials(pieces, shot)
    w, impactor_ids = build_world(
        pieces,
        bonds,
        materials,
        gravity=shot.sim.gravity,
        ground=shot.sim.ground,
        anchor_to_ground=shot.sim.anchor_to_ground,
        impactors=list(shot.impactors),
        backend=ctx.backend,
        threads=shot.sim.threads,
        seed=shot.shot.seed,
    )
    n_pieces = len(pieces["mass"])
    substeps = int(shot.sim.substeps)
    debris = _make_debris(shot, ctx.backend, materials)
    record = SimRecord()
    start_pos = w.positions()[:n_pieces]
    g = float(np.linalg.norm(shot.sim.gravity))
    floor = min(float(start_pos[:, 1].min()), 0.0)
    energy_available = float(np.sum(w.masses()[:n_pieces] * g * (start_pos[:, 1] - floor)))
    energy_available += sum(0.5 * i.mass * _max_key_speed(i) ** 2 for i in shot.impactors)

    resume, st = (None, {}) if ctx.force else _resume_point(sim_dir, first, last, ctx.inputs_hash)
    overloaded = None
    if resume is not None:
        w.load_state({k[len("world_") :]: v for k, v in st.items() if k.startswith("world_")})
        record = SimRecord.from_arrays(st)
        start_pos = st["start_position"]
        if debris is not None:
            debris.load_state(st)
        next_frame = resume + 1
    else:
        overloaded = _preroll(w, shot, fr, substeps, impactor_ids)
        next_frame = first

    def checkpoint(frame: int) -> None:
        arrays = {f"world_{k}": v for k, v in w.state().items()}
        arrays.update(record.arrays())
        arrays["start_position"] = start_pos
        if debris is not None:
            arrays.update(debris.state())
        arrays["inputs_hash"] = np.array(ctx.inputs_hash)
        save_npz(state_path(sim_dir, frame), STATE_FORMAT, frame=np.int64(frame), **arrays)

    todo = list(range(next_frame, last + 1))
    every = int(getattr(shot.sim, "checkpoint_every", 10))
    hulls = None
    with ctx.progress(len(todo), "simulate") as bar:
        for f in todo:
            if f > first:
                t0 = fr.sim_time(f - 1)
                _art_direction(w, shot, t0, t0 + fr.dt, impactor_ids, debris)
                w.step(fr.dt, substeps)
            new = w.new_breaks()
            if f > first and debris is not None:
                hulls = _debris_step(
                    debris, w, pieces, bonds, shot, fr.dt, substeps, hulls, n_pieces, new
                )
            record.bonds += new.tolist()
            record.frames += [f] * len(new)
            record.times += [fr.shot_time(f)] * len(new)
            _write_frame(sim_dir, f, fr, w, n_pieces, debris, record, energy_available)
            if (f - first) % every == every - 1 or f == last:
                checkpoint(f)
            bar.advance()
    save_npz(
        sim_dir / "breaks.npz",
        BREAKS_FORMAT,
        bond=np.asarray(record.bonds, np.int32),
        frame=np.asarray(record.frames, np.int64),
        time=np.asarray(record.times, np.float64),
    )
    end_pos = w.positions()[:n_pieces]
    figures: dict[str, Any] = {
        "pieces": int(n_pieces),
        "bonds": len(bonds["pairs"]),
        "frames": int(last - first + 1),
        "bonds_broken": int(w.bond_broken().sum()),
        "breaks_in_shot": len(record.bonds),
        "peak_speed": round(record.peak_speed, 4),
        "peak_kinetic_energy": float(record.peak_kinetic_energy),
        "final_kinetic_energy": float(w.kinetic_energy()),
        "pieces_moved": int((np.linalg.norm(end_pos - start_pos, axis=1) > MOVED).sum()),
        "substeps": substeps,
        "bonds_overloaded_after_preroll": overloaded,
        "resumed_from": int(resume) if resume is not None else None,
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    if debris is not None:
        figures["peak_rubble"] = int(debris.peak_rubble)
        figures["peak_dust"] = int(debris.peak_dust)
    return figures


def _max_key_speed(imp: Any) -> float:
    keys = imp.keys
    return max(
        (
            float(np.linalg.norm(np.subtract(b.position, a.position))) / (b.time - a.time)
            for a, b in itertools.pairwise(keys)
        ),
        default=0.0,
    )


def _preroll(w, shot, fr, substeps, impactor_ids) -> int:
    """Settle for sim.preroll seconds before the first frame, then put everything to sleep.

    The settle is quasi-static: every frame steps under gravity, then stops all motion, so the
    structure sags into its loaded rest without the ringing of gravity switched on at once (a
    shock no real building sees). Bonds hold meanwhile, but the stresses of the last frame (a
    step from rest: the static loads) are measured; returns how many are above their strength.
    No charges, regions or debris. Asleep, the settled building stands exactly still until
    disturbed.
    """
    n = int(np.ceil(float(shot.sim.preroll) / fr.dt - 1e-9))
    if n == 0:
        return 0
    w.breakable = False
    for k in range(n):
        t0 = -(n - k) * fr.dt
        for body, imp in zip(impactor_ids, shot.impactors):
            p, _ = impactor_motion(imp.keys, max(t0, 0.0), max(t0, 0.0) + fr.dt)
            w.set_kinematic(body, p, (0.0, 0.0, 0.0))
        w.step(fr.dt, substeps)
        w.stop()
    w.breakable = True
    overloaded = int((w.bond_stress_ratio() >= 1.0).sum())
    w.sleep_all()
    return overloaded


def _art_direction(w, shot, t0: float, t1: float, impactor_ids, debris) -> None:
    """Charges firing in [t0, t1), regions starting in it, impactor motion over it."""
    for c in shot.charges:
        if t0 <= c.time < t1:
            w.apply_charge(c.position, c.radius, c.impulse)
            if debris is not None:
                debris.emit_burst(c.position, c.radius, c.impulse, debris.time)
    for r in shot.regions:
        if t0 <= r.start < t1:  # once: the damage stays in the bonds (and in checkpoints)
            w.weaken(r.min, r.max, r.weaken)
    for body, imp in zip(impactor_ids, shot.impactors):
        p, v = impactor_motion(imp.keys, t0, t1)
        w.set_kinematic(body, p, v)


def _make_debris(shot: Shot, backend: str, materials: list[Any]):
    if not shot.debris.enabled:
        return None
    from destruct.debris import DebrisSystem

    return DebrisSystem(
        seed=shot.shot.seed,
        max_dust=shot.debris.max_particles,
        max_rubble=shot.debris.max_rubble,
        dust=shot.debris.dust,
        gravity=shot.sim.gravity,
        ground=shot.sim.ground,
        backend=backend,
        threads=shot.sim.threads,
        materials=materials,
    )


def _debris_step(debris, w, pieces, bonds, shot, dt, substeps, hulls, n_pieces, new):
    """Move rubble and dust over the step just taken and emit from this step's breaks."""
    from destruct.debris import break_inputs, hull_planes_from_points

    if hulls is None:
        hulls = hull_planes_from_points(pieces["hull_vertices"], pieces["hull_offset"])
    P = slice(0, n_pieces)
    debris.set_colliders(
        hulls,
        pieces["hull_piece"],
        w.positions()[P],
        w.rotations()[P],
        w.velocities()[P],
        w.angular_velocities()[P],
    )
    debris.step(dt, substeps)
    if len(new):
        pts = w.bond_points()[new]
        kin = break_inputs(
            bonds["pairs"][new],
            pts,
            bonds["areas"][new],
            w.positions()[P],
            w.velocities()[P],
            w.angular_velocities()[P],
            w.masses()[P],
        )
        debris.emit_breaks(
            pts,
            bonds["normals"][new],
            bonds["areas"][new],
            kin["energies"],
            kin["vel_a"],
            kin["vel_b"],
            pieces["material"][bonds["pairs"][new, 0]],
            shot.debris.per_break,
            time=debris.time,
        )
    return hulls


def _write_frame(sim_dir, f, fr, w, n_pieces, debris, record, energy_available) -> None:
    x = w.positions()[:n_pieces]
    v = w.velocities()[:n_pieces]
    q = w.rotations()[:n_pieces]
    om = w.angular_velocities()[:n_pieces]
    ke = w.kinetic_energy()
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(v)) and np.all(np.isfinite(q))):
        ok = np.isfinite(x).all(1) & np.isfinite(v).all(1) & np.isfinite(q).all(1)
        bad = int(np.flatnonzero(~ok)[0])
        raise UserError(
            f"simulate: frame {f}: piece {bad} has a non-finite position or velocity; likely "
            "cause: overlapping pieces at the start or too few sim.substeps for the impacts; "
            f"frames before {f} are valid"
        )
    bound = ENERGY_FACTOR * (energy_available + w.injected_energy) + 1.0
    if ke > bound:
        raise UserError(
            f"simulate: frame {f}: kinetic energy {ke:.4g} J exceeds {ENERGY_FACTOR:g}x the energy "
            f"available ({bound:.4g} J): the solver blew up; likely cause: interpenetrating "
            "pieces at the start or too few sim.substeps; frames before it are valid"
        )
    if len(v):
        record.peak_speed = max(record.peak_speed, float(np.linalg.norm(v, axis=1).max()))
    record.peak_kinetic_energy = max(record.peak_kinetic_energy, ke)
    arrays = debris.snapshot() if debris is not None else _empty_debris()
    save_npz(
        frame_path(sim_dir, f),
        SIM_FORMAT,
        frame=np.int64(f),
        time=np.float64(fr.shot_time(f)),
        position=x.astype(np.float32),
        rotation=q.astype(np.float32),
        velocity=v.astype(np.float32),
        angular_velocity=om.astype(np.float32),
        bond_broken=w.bond_broken(),
        bond_damage=w.bond_damage().astype(np.float32),
        kinetic_energy=np.float64(ke),
        **arrays,
    )

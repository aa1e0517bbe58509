"""The simulate stage on tiny synthetic fracture artifacts (docs/FORMATS.md): frame files,
charges, regions, impactors, time_scale, checkpoints and bit-identical resume."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("taichi")

from destruct.io import load_npz, save_npz
from destruct.rundir import RunDir
from destruct.shot import shot_from_dict
from destruct.simulate import run_simulate
from destruct.stages import Stage, StageContext

G = 9.81
DENSITY = 2400.0


def write_boxes(run, centres, half, bonds=(), tensile=2e6):
    """fracture/ with one box piece per centre (half extents `half`) and the given bonds:
    (a, b, point, normal, area) with b = -1 for the ground."""
    import trimesh

    n = len(centres)
    hx, hy, hz = half
    corners = np.array(
        [[sx * hx, sy * hy, sz * hz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    )
    mesh = trimesh.creation.box(extents=2 * np.asarray(half))
    vol = 8 * hx * hy * hz
    m = DENSITY * vol
    inertia = np.diag([m / 3 * (hy**2 + hz**2), m / 3 * (hx**2 + hz**2), m / 3 * (hx**2 + hy**2)])
    nv, nf = len(mesh.vertices), len(mesh.faces)
    save_npz(
        run / "fracture" / "pieces.npz",
        "destruct.pieces/1",
        names=np.array([f"part_00.piece_{i:04d}" for i in range(n)]),
        element=np.array(["part_00"] * n),
        kind=np.array(["part"] * n),
        material=np.zeros(n, np.int32),
        material_names=np.array(["concrete"]),
        volume=np.full(n, vol),
        mass=np.full(n, m),
        com=np.asarray(centres, np.float64),
        inertia=np.repeat(inertia[None], n, 0),
        vert_offset=np.arange(n + 1, dtype=np.int64) * nv,
        vertices=np.tile(np.asarray(mesh.vertices, np.float32), (n, 1)),
        face_offset=np.arange(n + 1, dtype=np.int64) * nf,
        faces=np.tile(np.asarray(mesh.faces, np.int32), (n, 1)),
        face_interior=np.zeros(n * nf, bool),
        hull_piece=np.arange(n, dtype=np.int32),
        hull_offset=np.arange(n + 1, dtype=np.int64) * 8,
        hull_vertices=np.tile(corners.astype(np.float32), (n, 1)),
        origin=np.zeros(3),
    )
    k = len(bonds)
    save_npz(
        run / "fracture" / "bonds.npz",
        "destruct.bonds/1",
        pairs=np.array([[b[0], b[1]] for b in bonds], np.int32).reshape(k, 2),
        points=np.array([b[2] for b in bonds], np.float64).reshape(k, 3),
        normals=np.array([b[3] for b in bonds], np.float64).reshape(k, 3),
        areas=np.array([b[4] for b in bonds], np.float64).reshape(k),
        tensile=np.full(k, tensile),
        shear=np.full(k, 2 * tensile),
        compressive=np.full(k, 20 * tensile),
    )


def make_ctx(run, frames=12, force=False, **sections):
    data = {
        "shot": {"name": "t", "frames": frames, "fps": 24.0, "start_frame": 1001},
        "debris": {"enabled": False},
    }
    data.setdefault("sim", {}).update({"backend": "cpu", "preroll": 0.0, "checkpoint_every": 4})
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    shot = shot_from_dict(data)
    return StageContext(
        shot=shot,
        run=RunDir(run),
        stage=Stage.SIMULATE,
        frames=list(range(1001, 1001 + frames)),
        force=force,
        quiet=True,
    )


def frame(run, f):
    return load_npz(run / "sim" / f"frame.{f:04d}.npz", "destruct.sim/1")


def row_of_blocks(run, n=5):
    """n 1 m cubes in a row on the ground, glued to their neighbours and to the ground."""
    centres = [(float(i), 0.5, 0.0) for i in range(n)]
    bonds = [(i, i + 1, (i + 0.5, 0.5, 0.0), (1, 0, 0), 1.0) for i in range(n - 1)]
    bonds += [(i, -1, (float(i), 0.0, 0.0), (0, -1, 0), 1.0) for i in range(n)]
    write_boxes(run, centres, (0.5, 0.5, 0.5), bonds)
    return bonds


def test_frame_files_follow_the_format_and_time_scale(tmp_path):
    # one free-falling cube (no ground), slowed down 2x: 24 frames = 0.5 s of simulation
    write_boxes(tmp_path, [(0.0, 10.0, 0.0)], (0.5, 0.5, 0.5))
    figures = run_simulate(make_ctx(tmp_path, frames=25, sim={"ground": False, "time_scale": 0.5}))
    d = frame(tmp_path, 1025)
    assert int(d["frame"]) == 1025 and float(d["time"]) == pytest.approx(1.0)
    t = 0.5
    assert abs(float(d["position"][0, 1]) - (10 - G * t * t / 2)) < 1e-3
    assert d["position"].dtype == np.float32 and d["position"].shape == (1, 3)
    assert d["rotation"].shape == (1, 4) and d["angular_velocity"].shape == (1, 3)
    assert d["bond_broken"].shape == (0,) and d["bond_damage"].dtype == np.float32
    assert d["rubble_position"].shape == (0, 3) and d["dust_alpha"].shape == (0,)
    assert float(d["kinetic_energy"]) == pytest.approx(0.5 * DENSITY * (G * t) ** 2, rel=1e-3)
    assert figures["frames"] == 25 and figures["pieces"] == 1 and figures["bonds_broken"] == 0
    assert frame(tmp_path, 1001)["position"][0, 1] == pytest.approx(10.0)


def test_glued_row_stands_and_a_charge_breaks_only_inside_its_radius(tmp_path):
    bonds = row_of_blocks(tmp_path)
    charge = {"time": 0.1, "position": [0.0, 0.5, 0.0], "radius": 1.6, "impulse": 4e4}
    figures = run_simulate(make_ctx(tmp_path, frames=6, charges=[charge]))
    before, at = frame(tmp_path, 1003), frame(tmp_path, 1004)  # 0.1 s lies in (1003, 1004]
    assert not before["bond_broken"].any()
    assert np.abs(before["position"] - frame(tmp_path, 1001)["position"]).max() < 1e-3
    inside = np.array([np.linalg.norm(np.subtract(b[2], charge["position"])) < 1.6 for b in bonds])
    assert (at["bond_broken"] == inside).all()
    speed = np.linalg.norm(at["velocity"], axis=1)
    assert speed[0] > 0.5 and speed[4] < 1e-3  # outside the radius: still glued, at rest
    breaks = load_npz(tmp_path / "sim" / "breaks.npz", "destruct.breaks/1")
    assert set(breaks["bond"][breaks["frame"] == 1004].tolist()) == set(
        np.flatnonzero(inside).tolist()
    )
    assert figures["bonds_broken"] >= int(inside.sum())


def test_breaking_bonds_emit_rubble_and_dust_reported_as_peaks(tmp_path):
    """The stage wiring of debris: nothing before the charge, rubble and dust born at the
    broken bonds when it fires, and the figures' peaks are the largest per-frame counts."""
    bonds = row_of_blocks(tmp_path)
    charge = {"time": 0.1, "position": [0.0, 0.5, 0.0], "radius": 1.6, "impulse": 4e4}
    figures = run_simulate(
        make_ctx(tmp_path, frames=6, charges=[charge], debris={"enabled": True, "per_break": 20.0})
    )
    frames = [frame(tmp_path, f) for f in range(1001, 1007)]
    assert all(len(f["rubble_id"]) == 0 and len(f["dust_position"]) == 0 for f in frames[:3])
    at = frames[3]  # the charge fires in (1003, 1004]
    assert len(at["rubble_id"]) > 0 and len(at["dust_position"]) > 0
    # born at the broken bonds and in the charge's burst (all inside its radius), 1/24 s ago
    assert at["bond_broken"].sum() == sum(
        np.linalg.norm(np.subtract(b[2], [0, 0.5, 0])) < 1.6 for b in bonds
    )
    reach = 1.6 + np.linalg.norm(at["rubble_velocity"], axis=1) / 24 + 0.05
    assert (np.linalg.norm(at["rubble_position"] - [0, 0.5, 0], axis=1) < reach).all()
    assert figures["peak_rubble"] == max(len(f["rubble_id"]) for f in frames)
    assert figures["peak_dust"] == max(len(f["dust_position"]) for f in frames)


def test_region_weakened_to_nothing_breaks_its_bonds_at_start(tmp_path):
    bonds = row_of_blocks(tmp_path)
    region = {"min": [2.2, -1.0, -1.0], "max": [4.8, 2.0, 1.0], "start": 0.2, "weaken": 1.0}
    run_simulate(make_ctx(tmp_path, frames=8, regions=[region]))
    inside = np.array([2.2 <= b[2][0] <= 4.8 for b in bonds])
    # 0.2 s = frame 1001 + 4.8: the step from 1005 to 1006 starts before it and ends after
    assert not frame(tmp_path, 1005)["bond_broken"].any()
    assert (frame(tmp_path, 1006)["bond_broken"] == inside).all()


def test_impactor_sweeps_a_loose_block_away(tmp_path):
    write_boxes(tmp_path, [(0.0, 0.5, 0.0)], (0.5, 0.5, 0.5))
    ball = {
        "radius": 0.6,
        "mass": 5000.0,
        "keys": [
            {"time": 0.0, "position": [-3.0, 0.7, 0.0]},
            {"time": 0.5, "position": [3.0, 0.7, 0.0]},
        ],
    }
    run_simulate(make_ctx(tmp_path, frames=18, impactors=[ball]))
    x = frame(tmp_path, 1018)["position"][0]
    assert x[0] > 1.0  # pushed along the ball's path


def _arrays(run, names):
    return {
        n: load_npz(run / "sim" / n, "destruct.breaks/1" if n == "breaks.npz" else "destruct.sim/1")
        for n in names
    }


def test_resume_from_a_checkpoint_is_bit_identical(tmp_path):
    row_of_blocks(tmp_path)
    charge = {"time": 0.05, "position": [0.0, 0.5, 0.0], "radius": 1.6, "impulse": 6e4}
    run_simulate(make_ctx(tmp_path, frames=12, charges=[charge]))
    names = sorted(p.name for p in (tmp_path / "sim").glob("frame.*.npz")) + ["breaks.npz"]
    clean = _arrays(tmp_path, names)
    # a run killed after frame 1010: checkpoint 1008 is the last whose frames all exist
    for f in (1011, 1012):
        (tmp_path / "sim" / f"frame.{f:04d}.npz").unlink()
    (tmp_path / "sim" / "state.1012.npz").unlink()
    (tmp_path / "sim" / "breaks.npz").unlink()
    figures = run_simulate(make_ctx(tmp_path, frames=12, charges=[charge]))
    assert figures["resumed_from"] == 1008
    resumed = _arrays(tmp_path, names)
    for n in names:
        for key, value in clean[n].items():
            np.testing.assert_array_equal(resumed[n][key], value, err_msg=f"{n}:{key}")


def test_checkpoints_of_other_inputs_or_damaged_ones_are_passed_over(tmp_path):
    """A checkpoint is resumed only when it was made from the same inputs (the stage's inputs
    hash) and still reads: a changed shot simulates from the start, a damaged newest
    checkpoint falls back to the one before."""
    import shutil

    row_of_blocks(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    weak = {"time": 0.05, "position": [0.0, 0.5, 0.0], "radius": 1.6, "impulse": 6e4}
    strong = {**weak, "impulse": 2e5}

    def sim(run, charge, key):
        ctx = make_ctx(run, frames=12, charges=[charge])
        ctx.inputs_hash = key
        return run_simulate(ctx)

    sim(tmp_path / "a", weak, "weak")
    # every frame and checkpoint of the weak charge is on disk, but the shot changed
    assert sim(tmp_path / "a", strong, "strong")["resumed_from"] is None
    sim(tmp_path / "b", strong, "strong")  # a fresh run of the changed shot
    names = sorted(p.name for p in (tmp_path / "b" / "sim").glob("frame.*.npz")) + ["breaks.npz"]
    changed, fresh = _arrays(tmp_path / "a", names), _arrays(tmp_path / "b", names)
    for n in names:
        for key, value in fresh[n].items():
            np.testing.assert_array_equal(changed[n][key], value, err_msg=f"{n}:{key}")
    # the newest checkpoint cut short (a full disk, a killed copy): the one before is resumed
    newest = tmp_path / "a" / "sim" / "state.1012.npz"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    assert sim(tmp_path / "a", strong, "strong")["resumed_from"] == 1008


@pytest.fixture(scope="module")
def default_fracture(tmp_path_factory):
    """The bundled default shot's fracture/ (about 800 pieces), prepared once."""
    import destruct
    from destruct.fracture import write_fracture

    shot = destruct.load_shot(destruct.default_shot_path())
    folder = tmp_path_factory.mktemp("default")
    write_fracture(destruct.prepare(shot), folder / "fracture")
    return shot, folder


def _default_run(default_fracture, tmp_path, frames, charges):
    import shutil

    shot, folder = default_fracture
    shutil.copytree(folder / "fracture", tmp_path / "fracture")
    data = shot.model_dump()
    data["shot"]["frames"] = frames
    data["debris"]["enabled"] = False
    data["sim"]["backend"] = "cpu"
    if not charges:
        data["charges"] = []
    ctx = StageContext(
        shot=shot_from_dict(data),
        run=RunDir(tmp_path),
        stage=Stage.SIMULATE,
        frames=list(range(1001, 1001 + frames)),
        quiet=True,
    )
    return run_simulate(ctx)


@pytest.mark.slow
def test_default_building_stands_without_charges(default_fracture, tmp_path):
    figures = _default_run(default_fracture, tmp_path, 49, charges=False)  # 2 s after frame 1001
    first, last = frame(tmp_path, 1001), frame(tmp_path, 1049)
    assert not last["bond_broken"].any() and figures["bonds_broken"] == 0
    assert np.linalg.norm(last["position"] - first["position"], axis=1).max() < 0.02


@pytest.mark.slow
def test_default_building_stands_awake_on_its_own_bonds(default_fracture):
    """Not only asleep: woken after the pre-roll with every bond breakable, the default building
    carries itself for 2 s. A few bonds at stress concentrations (sliver faces, slab corners
    over columns) may go; the structure does not."""
    from destruct.simulate import (
        BONDS_FORMAT,
        PIECES_FORMAT,
        _Frames,
        _materials,
        _preroll,
        build_world,
    )

    shot, folder = default_fracture
    pieces = load_npz(folder / "fracture" / "pieces.npz", PIECES_FORMAT)
    bonds = load_npz(folder / "fracture" / "bonds.npz", BONDS_FORMAT)
    w, impactors = build_world(pieces, bonds, _materials(pieces, shot), backend="cpu")
    fr = _Frames(shot)
    overloaded = _preroll(w, shot, fr, shot.sim.substeps, impactors)
    assert overloaded <= 0.02 * w.num_bonds
    start = w.positions()
    w.wake(np.arange(w.num_bodies))
    for _ in range(48):
        w.step(fr.dt, shot.sim.substeps)
    assert w.bond_broken().sum() <= 0.02 * w.num_bonds
    assert np.linalg.norm(w.positions() - start, axis=1).max() < 0.02


@pytest.mark.slow
def test_default_building_collapses_when_the_charges_fire(default_fracture, tmp_path):
    _default_run(default_fracture, tmp_path, 121, charges=True)  # 5 s
    y0 = frame(tmp_path, 1001)["position"][:, 1]
    y1 = frame(tmp_path, 1121)["position"][:, 1]
    above = y0 > 3.5  # above the first floor (storey height 3.5 m)
    assert ((y1 < y0 / 2) & above).sum() >= 0.7 * above.sum()


def test_non_finite_state_stops_with_the_frame_named(tmp_path):
    from destruct.errors import UserError
    from destruct.simulate import SimRecord, _Frames, _write_frame

    class Broken:  # the World methods _write_frame reads, one piece gone to NaN
        injected_energy = 0.0

        def positions(self):
            return np.array([[0.0, 1.0, 0.0], [np.nan, 0.0, 0.0]])

        velocities = angular_velocities = lambda self: np.zeros((2, 3))
        rotations = lambda self: np.tile([1.0, 0, 0, 0], (2, 1))
        kinetic_energy = lambda self: 0.0

    shot = make_ctx(tmp_path).shot
    with pytest.raises(UserError, match="frame 1007: piece 1"):
        _write_frame(tmp_path, 1007, _Frames(shot), Broken(), 2, None, SimRecord(), 1e6)
    assert not (tmp_path / "frame.1007.npz").exists()


def test_energy_blow_up_stops_with_the_frame_named(tmp_path):
    from destruct.errors import UserError
    from destruct.simulate import SimRecord, _Frames, _write_frame

    class Hot:
        injected_energy = 10.0

        def positions(self):
            return np.zeros((1, 3))

        velocities = angular_velocities = lambda self: np.zeros((1, 3))
        rotations = lambda self: np.array([[1.0, 0, 0, 0]])
        kinetic_energy = lambda self: 1e9

    shot = make_ctx(tmp_path).shot
    with pytest.raises(UserError, match="frame 1003: kinetic energy"):
        _write_frame(tmp_path, 1003, _Frames(shot), Hot(), 1, None, SimRecord(), 100.0)

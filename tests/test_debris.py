"""Rubble and dust (issue 5): emission counts, resting contact, hull collisions, dust life,
determinism, caps and bit-identical resume. Tiny systems, a few simulated seconds."""

import io
from dataclasses import replace

import numpy as np
import pytest

from destruct.materials import PRESETS

debris = pytest.importorskip("destruct.debris")
DebrisSystem = debris.DebrisSystem
hull_planes_from_points = debris.hull_planes_from_points

DT, SUB = 1 / 24, 8
#: A material whose breaks throw bits at ~1 mm/s: rubble falls straight down.
STILL = replace(PRESETS["concrete"], name="still", tensile=1.0, restitution=0.0)


def box(half) -> np.ndarray:
    hx, hy, hz = half
    return np.array([[x, y, z] for x in (-hx, hx) for y in (-hy, hy) for z in (-hz, hz)], float)


def breaks(points, area=0.5, energy_scale=1.0, per_break=6.0, normal=(1.0, 0.0, 0.0)):
    """emit_breaks arguments for bonds at ``points`` releasing energy_scale x the reference."""
    p = np.asarray(points, float).reshape(-1, 3)
    n = len(p)
    a = np.full(n, area)
    return {
        "points": p,
        "normals": np.tile(normal, (n, 1)),
        "areas": a,
        "energies": energy_scale * debris.G_REF * a,
        "vel_a": np.zeros((n, 3)),
        "vel_b": np.zeros((n, 3)),
        "material": np.zeros(n, int),
        "per_break": per_break,
    }


def spaced(n, y=2.0, gap=10.0):
    """n points on a line, far enough apart that each break's bits stay near their own point."""
    return np.column_stack([np.arange(n) * gap, np.full(n, y), np.zeros(n)])


def per_point_counts(snap, pts, reach=2.0) -> np.ndarray:
    x = snap["rubble_position"][:, 0]
    return np.array([(np.abs(x - p[0]) < reach).sum() for p in pts])


def test_zero_breaks_emit_nothing():
    d = DebrisSystem(seed=0, max_rubble=100, max_dust=100)
    d.emit_breaks(**breaks(np.zeros((0, 3))), time=0.0)
    d.step(DT, SUB)
    s = d.snapshot()
    assert d.live_rubble == 0 and d.live_dust == 0
    assert s["rubble_position"].shape == (0, 3) and s["rubble_position"].dtype == np.float32
    assert s["rubble_id"].dtype == np.int32 and s["dust_alpha"].shape == (0,)


def test_counts_scale_with_area_and_energy():
    n = 60
    pts = spaced(n)
    cases = {  # (area, energy scale) -> expected bits per break: per_break * area * scale
        (0.5, 1.0): 3,
        (1.0, 1.0): 6,
        (0.5, 2.0): 6,
        (0.5, 100.0): 3 * debris.MAX_ENERGY_SCALE,
        (0.5, 0.0): 0,
    }
    for (area, scale), expect in cases.items():
        d = DebrisSystem(seed=1, max_rubble=10_000, max_dust=100_000)
        d.emit_breaks(**breaks(pts, area=area, energy_scale=scale), time=0.0)
        s = d.snapshot()
        assert d.live_rubble == n * expect, (area, scale)
        assert d.live_dust == n * expect * debris.DUST_PER_BIT, (area, scale)
        assert (per_point_counts(s, pts) == expect).all(), (area, scale)
        # the bits start on the bond face: within the disc of the bond's area, plus a radius
        if expect:
            off = s["rubble_position"] - pts[np.rint(s["rubble_position"][:, 0] / 10).astype(int)]
            assert (np.hypot(off[:, 1], off[:, 2]) <= np.sqrt(area / np.pi) + 1e-4).all()
            # a radius off the face (1e-4: float32 at x ~ 600)
            assert (np.abs(np.abs(off[:, 0]) - s["rubble_radius"]) < 1e-4).all()
            r = s["rubble_radius"]
            assert r.min() >= 0.02 - 1e-7 and r.max() <= min(0.15, 0.5 * np.sqrt(area)) + 1e-7


def test_fractional_counts_round_stochastically():
    n = 2000
    d = DebrisSystem(seed=2, max_rubble=10_000, max_dust=1)
    d.emit_breaks(**breaks(spaced(n), area=0.05, per_break=10.0), time=0.0)  # 0.5 bits each
    counts = per_point_counts(d.snapshot(), spaced(n))
    assert set(np.unique(counts)) <= {0, 1}
    assert abs(counts.sum() - 1000) < 4 * np.sqrt(n * 0.25)  # binomial(2000, 0.5), 4 sigma


def test_rubble_rests_on_ground_and_sleeps():
    d = DebrisSystem(seed=3, max_rubble=2000, max_dust=1, dust=False)
    pts = np.column_stack([np.linspace(-3, 3, 40), np.linspace(0.3, 3, 40), np.zeros(40)])
    d.emit_breaks(**breaks(pts, area=0.3, energy_scale=3.0, per_break=10.0), time=0.0)
    assert d.live_rubble > 100
    for _ in range(int(4 / DT)):
        d.step(DT, SUB)
        s = d.snapshot()
        assert (s["rubble_position"][:, 1] - s["rubble_radius"]).min() >= -1e-4
    # at rest: asleep (velocity exactly zero), each on the ground or on another bit, not floating
    assert not s["rubble_velocity"].any()
    x, r = s["rubble_position"].astype(float), s["rubble_radius"].astype(float)
    on_ground = x[:, 1] - r < 1e-3
    gap = np.linalg.norm(x[:, None] - x[None], axis=2) - (r[:, None] + r[None])
    np.fill_diagonal(gap, np.inf)
    below = x[None, :, 1] < x[:, None, 1]  # [i, j]: j lower than i
    on_bit = ((gap < 2e-3) & below).any(axis=1)
    assert (on_ground | on_bit).all() and on_ground.mean() > 0.5
    sleeping = d.state()["debris_rubble_i"][:, 1]
    assert sleeping[s["rubble_id"]].all()
    # quaternions stay unit
    assert np.allclose(np.linalg.norm(s["rubble_rotation"], axis=1), 1, atol=1e-5)


def test_rubble_lands_on_a_fixed_box_top_face():
    d = DebrisSystem(seed=4, max_rubble=500, max_dust=1, dust=False, materials=[STILL])
    hulls = hull_planes_from_points([box((1.0, 0.5, 1.0))])
    d.set_colliders(hulls, [0], [[0, 0.5, 0]], [[1, 0, 0, 0]], [[0, 0, 0]], [[0, 0, 0]])
    pts = np.column_stack(
        [np.linspace(-0.6, 0.6, 10), np.full(10, 3.0), np.linspace(-0.6, 0.6, 10)]
    )
    d.emit_breaks(**breaks(pts, area=0.02, normal=(0, 1, 0), per_break=500.0), time=0.0)
    assert d.live_rubble >= 90
    for _ in range(int(2.5 / DT)):
        d.set_colliders(hulls, [0], [[0, 0.5, 0]], [[1, 0, 0, 0]], [[0, 0, 0]], [[0, 0, 0]])
        d.step(DT, SUB)
    s = d.snapshot()
    bottom = s["rubble_position"][:, 1] - s["rubble_radius"]
    # on the top face (y = 1) or on a bit lying there; never in the box, none fell to the ground
    assert bottom.min() > 1.0 - 2e-3 and bottom.max() < 1.0 + 2 * 0.15
    assert (np.abs(bottom - 1.0) < 2e-3).mean() > 0.9
    assert np.abs(s["rubble_position"][:, [0, 2]]).max() < 1.0
    assert not s["rubble_velocity"].any()


def test_moving_piece_pushes_rubble_ahead():
    d = DebrisSystem(seed=5, max_rubble=500, max_dust=1, dust=False, materials=[STILL])
    pts = np.column_stack([np.zeros(8), np.full(8, 0.3), np.linspace(-0.3, 0.3, 8)])
    d.emit_breaks(**breaks(pts, area=0.02, normal=(0, 1, 0), per_break=300.0), time=0.0)
    for _ in range(12):  # settle on the ground
        d.step(DT, SUB)
    hulls = hull_planes_from_points([box((0.5, 0.5, 0.5))])
    speed = 2.0
    for f in range(int(2.0 / DT) + 1):
        cx = -2.0 + speed * f * DT
        d.set_colliders(hulls, [0], [[cx, 0.5, 0]], [[1, 0, 0, 0]], [[speed, 0, 0]], [[0, 0, 0]])
        d.step(DT, SUB)
        s = d.snapshot()
        # the box never swallows a bit: every centre stays at least ~a radius ahead of its face
        assert (s["rubble_position"][:, 0] - s["rubble_radius"] >= cx + 0.5 - 0.01).all(), f
    assert s["rubble_position"][:, 0].min() > 2.0  # pushed from x = 0 to beyond x = 2


def test_dust_rises_grows_fades_and_is_gone_after_its_lifetime():
    d = DebrisSystem(seed=6, max_rubble=0, max_dust=10_000)
    pts = np.column_stack([np.linspace(0, 10, 50), np.ones(50), np.zeros(50)])
    d.emit_breaks(**breaks(pts), time=0.0)
    s0 = d.snapshot()
    assert len(s0["dust_position"]) == 50 * 3 * debris.DUST_PER_BIT and d.live_rubble == 0
    for _ in range(24):
        d.step(DT, SUB)
    s1 = d.snapshot()
    assert s1["dust_position"][:, 1].mean() > s0["dust_position"][:, 1].mean() + 0.3
    assert s1["dust_radius"].mean() > 1.5 * s0["dust_radius"].mean()
    assert 0 < s1["dust_alpha"].max() <= 1
    d.step(DT, SUB)  # the cached velocity is the motion: positions move by about v dt
    moved = (d.snapshot()["dust_position"] - s1["dust_position"]) / DT
    assert np.abs(moved - s1["dust_velocity"]).max() < 0.1 * np.abs(s1["dust_velocity"]).max()
    life = debris.DUST_LIFE * 1.25  # the longest lifetime drawn
    while d.time < life - 2 * DT:
        d.step(DT, SUB)
    s2 = d.snapshot()
    assert 0 < len(s2["dust_alpha"]) and s2["dust_alpha"].max() < 0.01  # fading out at the end
    d.step(DT, SUB)
    d.step(DT, SUB)
    assert d.live_dust == 0 and len(d.snapshot()["dust_position"]) == 0


def test_burst_throws_rubble_outwards():
    d = DebrisSystem(seed=7, max_rubble=5000, max_dust=50_000)
    d.emit_burst([0, 2, 0], radius=2.0, impulse=4e4, time=0.0)
    s = d.snapshot()
    assert d.live_rubble == round(debris.BURST_BITS * 2)  # sqrt(4e4 / 1e4) = 2
    off = s["rubble_position"] - [0, 2, 0]
    assert np.linalg.norm(off, axis=1).max() <= 1.0 + 1e-5  # a ball of half the radius
    radial = np.einsum("ij,ij->i", off, s["rubble_velocity"])
    assert (radial > 0).mean() > 0.9


def _scenario(seed, frames=20, max_rubble=3000, state_at=None):
    """Breaks every few frames around a falling box; returns snapshots (and a state midway)."""
    d = DebrisSystem(seed=seed, max_rubble=max_rubble, max_dust=5000)
    hulls = hull_planes_from_points([box((0.5, 0.5, 0.5))])
    return d, hulls, _run(d, hulls, 0, frames, state_at)


def _run(d, hulls, f0, f1, state_at=None):
    snaps, saved = [], None
    for f in range(f0, f1):
        t = f * DT
        y = max(0.5, 3.0 - 0.5 * 9.81 * t * t)
        w = np.array([[0.0, 0.0, 0.7]])
        q = [[np.cos(0.35 * t), 0, 0, np.sin(0.35 * t)]]
        d.set_colliders(hulls, [0], [[0.2, y, 0]], q, [[0, -9.81 * t if y > 0.5 else 0, 0]], w)
        d.step(DT, SUB)
        if f % 3 == 0:
            pts = np.column_stack([np.linspace(-1, 1, 5), np.full(5, 2.0 + 0.1 * f), np.zeros(5)])
            d.emit_breaks(**breaks(pts, energy_scale=2.0), time=d.time)
        if f == 7:
            d.emit_burst([1, 1, 1], 1.0, 1e4, d.time)
        if f + 1 == state_at:
            saved = d.state()
        snaps.append(d.snapshot())
    return snaps, saved


def test_same_seed_same_particles_other_seed_different():
    _, _, (a, _) = _scenario(11)
    _, _, (b, _) = _scenario(11)
    _, _, (c, _) = _scenario(12)
    for sa, sb in zip(a, b):
        for k in sa:
            assert np.array_equal(sa[k], sb[k]), k
    assert not np.array_equal(a[-1]["rubble_position"], c[-1]["rubble_position"])


def test_cap_respected_and_oldest_recycled():
    d = DebrisSystem(seed=8, max_rubble=50, max_dust=40)
    far = np.array([[100.0, 1.0, 0.0]])
    d.emit_breaks(**breaks(np.zeros((1, 3)), area=1.0, per_break=30.0), time=0.0)  # 30 bits at 0
    d.emit_breaks(**breaks(far, area=1.0, per_break=40.0), time=0.0)  # 40 bits at x = 100
    s = d.snapshot()
    assert d.live_rubble == 50 and d.live_dust == 40 and len(s["dust_position"]) == 40
    assert np.array_equal(s["rubble_id"], np.arange(50))
    near_far = s["rubble_position"][:, 0] > 50
    # slots 0..19 were the oldest (first call): recycled for the second call; 20..29 survive
    assert near_far[:20].all() and not near_far[20:30].any() and near_far[30:].all()
    assert (s["dust_position"][:, 0] > 50).all()  # dust cap 40: only the newest remain
    d.emit_breaks(**breaks(np.zeros((1, 3)), area=1.0, per_break=120.0), time=0.0)  # > cap at once
    assert d.live_rubble == 50 and (d.snapshot()["rubble_position"][:, 0] < 50).all()
    # one call drawing 30 + 40 particles for 50 slots keeps the newest 50: 10 of the first source
    starts, counts, total, skip = debris._newest(np.array([30, 40]), 50)
    assert starts.tolist() == [0, 10] and counts.tolist() == [10, 40] and (total, skip) == (70, 20)


def test_state_round_trip_continues_bit_identically():
    _d, hulls, (ref, saved) = _scenario(21, frames=24, state_at=12)
    buf = io.BytesIO()
    np.savez(buf, **saved)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        loaded = {k: z[k] for k in z.files}
    assert all(k.startswith("debris_") for k in loaded)
    e = DebrisSystem(seed=21, max_rubble=3000, max_dust=5000)
    e.load_state(loaded)
    resumed, _ = _run(e, hulls, 12, 24)
    for sa, sb in zip(ref[12:], resumed):
        for k in sa:
            assert np.array_equal(sa[k], sb[k]), k
    with pytest.raises(ValueError, match="caps"):
        DebrisSystem(seed=21, max_rubble=10, max_dust=5000).load_state(loaded)


def test_hull_planes_of_a_box_and_a_flat_set():
    hp = hull_planes_from_points(box((1.0, 2.0, 3.0)).astype(np.float32), [0, 8])
    assert hp.count == 1 and len(hp.planes) == 6  # coplanar triangles merged
    n, dist = hp.planes[:, :3], hp.planes[:, 3]
    assert np.allclose(np.linalg.norm(n, axis=1), 1)
    assert np.allclose(sorted(-dist), [1, 1, 2, 2, 3, 3])
    assert np.isclose(hp.radius[0], np.sqrt(14)) and np.allclose(hp.center[0], 0)
    flat = hull_planes_from_points([np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0.0]])])
    # a flat square becomes a 1 mm slab bounded on all six sides, not an unbounded plane
    assert len(flat.planes) == 6 and np.isclose(-flat.planes[:, 3].max(), debris.FLAT_PAD)


def test_bad_arguments_are_refused():
    d = DebrisSystem(seed=0, max_rubble=10, max_dust=10)
    args = breaks(np.zeros((2, 3)))
    args["material"] = np.array([0, 3])
    with pytest.raises(ValueError, match="material"):
        d.emit_breaks(**args, time=0.0)
    with pytest.raises(ValueError, match="dt"):
        d.step(0.0, 8)
    hulls = hull_planes_from_points([box((1, 1, 1))])
    with pytest.raises(ValueError, match="finite"):
        d.set_colliders(hulls, [0], [[np.nan, 0, 0]], [[1, 0, 0, 0]], [[0, 0, 0]], [[0, 0, 0]])
    # a bond on a piece the solver lost (NaN) emits nothing; the others still do
    e = DebrisSystem(seed=0, max_rubble=100, max_dust=1000)
    args = breaks(spaced(3), area=1.0, per_break=4.0)
    args["points"][1] = np.nan
    e.emit_breaks(**args, time=0.0)
    assert e.live_rubble == 8 and np.isfinite(e.snapshot()["rubble_position"]).all()


def test_break_inputs_velocities_at_the_point_and_energy():
    out = debris.break_inputs(
        pairs=[[0, 1], [2, -1]],
        points=[[1, 1, 0], [0, 0, 0]],
        areas=[0.5, 0.2],
        positions=[[0, 0, 0], [1, 0, 0], [0, 0, 0]],
        velocities=[[1, 0, 0], [0, 0, 0], [0, 2, 0]],
        angular_velocities=[[0, 0, 0], [0, 0, 1], [0, 0, 0]],
        masses=[2.0, 2.0, 3.0],
    )
    assert np.allclose(out["vel_a"], [[1, 0, 0], [0, 2, 0]])
    assert np.allclose(out["vel_b"], [[-1, 0, 0], [0, 0, 0]])  # w x r = (0,0,1) x (0,1,0)
    # fracture energy of the face + 1/2 m_red dv^2 (m_red = 1 kg for 2|2 kg, 3 kg on the ground)
    assert np.allclose(out["energies"], [debris.G_REF * 0.5 + 2.0, debris.G_REF * 0.2 + 6.0])


def test_snapshot_ages():
    d = DebrisSystem(seed=9, max_rubble=100, max_dust=100)
    d.emit_breaks(**breaks(np.zeros((1, 3)) + [0, 5, 0]), time=0.0)
    for _ in range(6):
        d.step(DT, SUB)
    d.emit_breaks(**breaks(np.zeros((1, 3)) + [0, 5, 0]), time=d.time)
    s = d.snapshot()
    assert np.allclose(np.sort(np.unique(s["rubble_age"])), [0.0, 6 * DT], atol=1e-6)
    assert np.allclose(np.sort(np.unique(s["dust_age"])), [0.0, 6 * DT], atol=1e-6)


def test_curl_noise_is_divergence_free():
    from sim_kernels import debris as K
    from sim_kernels.backend import F2, f64, ti, vec3

    @ti.kernel
    def sample(modes: F2, per: ti.i32, pts: F2, t: f64, out: F2):
        for i in range(pts.shape[0]):
            v = K.curl_noise(modes, per, vec3(pts[i, 0], pts[i, 1], pts[i, 2]), t)
            for c in ti.static(range(3)):
                out[i, c] = v[c]

    DebrisSystem(seed=0, max_rubble=1, max_dust=1)  # initialises Taichi
    modes_np = DebrisSystem._noise_modes(3)
    modes = ti.ndarray(ti.f64, modes_np.shape)
    modes.from_numpy(modes_np)
    x = np.random.default_rng(0).uniform(-20, 20, (200, 3))
    h = 1e-3
    shifted = np.concatenate([x + s * h * np.eye(3)[d] for d in range(3) for s in (1, -1)])
    pts = ti.ndarray(ti.f64, shifted.shape)
    pts.from_numpy(shifted)
    out = ti.ndarray(ti.f64, shifted.shape)
    sample(modes, len(modes_np) // 3, pts, 1.5, out)
    v = out.to_numpy().reshape(3, 2, len(x), 3)  # [axis d, +/-, point, component]
    dv = (v[:, 0] - v[:, 1]) / (2 * h)  # dv[d, i, c] = d v_c / d x_d
    div = dv[0, :, 0] + dv[1, :, 1] + dv[2, :, 2]
    assert np.abs(div).max() < 1e-6  # exact up to the O(h^2) difference error
    assert np.abs(dv).mean() > 0.05  # while the field does vary (~ TURBULENCE * |k|)
    speed = np.linalg.norm(v[0, 0], axis=1)
    assert 0.2 * debris.TURBULENCE < speed.mean() < 3 * debris.TURBULENCE


def test_rubble_piles_up_on_resting_rubble():
    d = DebrisSystem(seed=10, max_rubble=1000, max_dust=1, dust=False, materials=[STILL])
    for _ in range(6):  # six waves of 30 bits (radius <= 5 cm) dropped on one spot, 1 s apart
        d.emit_breaks(
            **breaks([[0, 1.0, 0]], area=0.01, normal=(0, 1, 0), per_break=3000.0), time=d.time
        )
        for _ in range(24):
            d.step(DT, SUB)
    for _ in range(48):
        d.step(DT, SUB)
    s = d.snapshot()
    x, r = s["rubble_position"].astype(float), s["rubble_radius"].astype(float)
    assert len(x) == 180 and r.max() <= 0.05 + 1e-6
    assert (x[:, 1] + r).max() > 0.2  # a heap: one layer of these bits is at most 0.1 m high
    assert not s["rubble_velocity"].any()  # and it has come to rest
    gap = np.linalg.norm(x[:, None] - x[None], axis=2) - (r[:, None] + r[None])
    np.fill_diagonal(gap, np.inf)
    supported = (x[:, 1] - r < 1e-3) | ((gap < 2e-3) & (x[None, :, 1] < x[:, None, 1])).any(axis=1)
    assert supported.all()


def test_resume_while_settled_next_to_a_static_piece():
    """Once nothing moves, steps skip the sleepers' checks and reuse the resting grid; a resumed
    run must make the same choices (the checkpoint carries that flag)."""
    hulls = hull_planes_from_points([box((1.0, 0.5, 1.0))])
    pose = ([[0, 0.5, 0]], [[1, 0, 0, 0]], [[0, 0, 0]], [[0, 0, 0]])
    pts = np.column_stack([np.linspace(-2, 2, 9), np.full(9, 2.0), np.zeros(9)])

    def run(d, f0, f1, saved_at=None):
        saved = None
        for f in range(f0, f1):
            d.set_colliders(hulls, [0], *pose)
            d.step(DT, SUB)
            if f in (0, 60):
                d.emit_breaks(**breaks(pts, area=0.1, per_break=60.0), time=d.time)
            if f + 1 == saved_at:
                saved = d.state()
        return d.snapshot(), saved

    a = DebrisSystem(seed=13, max_rubble=500, max_dust=10)
    ref, saved = run(a, 0, 80, saved_at=50)
    assert saved["debris_counters"][8] == 1  # quiet when saved: everything was asleep
    b = DebrisSystem(seed=13, max_rubble=500, max_dust=10)
    b.load_state(saved)
    out, _ = run(b, 50, 80)
    for k in ref:
        assert np.array_equal(ref[k], out[k]), k

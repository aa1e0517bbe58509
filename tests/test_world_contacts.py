"""World contacts: free fall, friction on an incline, stacks at rest, sleeping and waking,
momentum in a collision. Each test asserts the analytic answer (DESIGN.md section 6)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("taichi")

from destruct.world import World

FPS = 24
G = 9.81


def box(hx: float, hy: float, hz: float) -> np.ndarray:
    """(8, 3) corners of a box with half extents hx, hy, hz."""
    return np.array(
        [[sx * hx, sy * hy, sz * hz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    )


def run(w: World, seconds: float, substeps: int = 8) -> None:
    for _ in range(round(seconds * FPS)):
        w.step(1 / FPS, substeps)


def test_free_fall_is_exact_at_8_substeps():
    w = World(ground=False, backend="cpu")
    w.add_body(box(0.5, 0.5, 0.5), density=1000.0, position=(0, 10, 0), velocity=(1, 0, 0))
    run(w, 1.0)
    x = w.positions()[0]
    assert abs(x[1] - (10 - G / 2)) < 1e-3
    assert abs(x[0] - 1.0) < 1e-9
    assert abs(w.velocities()[0, 1] + G) < 1e-6


def _incline(mu: float) -> tuple[World, int, np.ndarray]:
    """A box resting on a fixed 30-degree slab; returns the world, the box and the down-slope axis."""
    t = math.radians(30)
    q = (math.cos(t / 2), 0, 0, math.sin(t / 2))  # rotation about +z
    n = np.array([-math.sin(t), math.cos(t), 0])  # slab's top normal
    down = np.array([-math.cos(t), -math.sin(t), 0])  # down the slope
    w = World(ground=False, backend="cpu")
    w.add_body(box(6, 0.25, 2), position=(0, 0, 0), rotation=q, fixed=True, friction=mu)
    b = w.add_body(box(0.25, 0.25, 0.25), density=1000.0, position=n * 0.5, rotation=q, friction=mu)
    return w, b, down


def test_incline_static_friction_holds():
    w, b, _ = _incline(0.7)
    x0 = w.positions()[b]
    run(w, 2.0)
    assert np.linalg.norm(w.positions()[b] - x0) < 1e-3


def test_incline_sliding_acceleration_matches_coulomb():
    w, b, down = _incline(0.3)
    run(w, 0.5)
    v1 = w.velocities()[b] @ down
    run(w, 1.0)
    v2 = w.velocities()[b] @ down
    a = v2 - v1
    expected = G * (math.sin(math.radians(30)) - 0.3 * math.cos(math.radians(30)))
    assert abs(a - expected) < 0.05 * expected


def test_box_sliding_on_a_moving_slab_feels_coulomb_friction():
    """A box slides on a slab that slides on frictionless ground: friction decelerates the box
    at mu g and pushes the slab at mu g m / M. Both bodies move, so the contact's masses are
    scaled in the position pass (solve.MASS_SCALE_PER_M); the friction must still follow the
    real load (friction read from the scaled multiplier came out 12 % weak)."""
    mu, v0 = 0.3, 4.0
    w = World(backend="cpu", ground_friction=0.0)
    slab = w.add_body(box(3, 0.25, 1), density=100.0, position=(0, 0.25, 0), friction=mu)
    top = w.add_body(
        box(0.25, 0.25, 0.25),
        density=1000.0,
        position=(-2, 0.75, 0),
        velocity=(v0, 0, 0),
        friction=mu,
    )
    m, big_m = 1000.0 * 0.5**3, 100.0 * 6 * 0.5 * 2
    run(w, 0.25)
    v1 = w.velocities()[[top, slab], 0]
    run(w, 0.5)
    v2 = w.velocities()[[top, slab], 0]
    assert abs((v1[0] - v2[0]) - mu * G * 0.5) < 0.03 * mu * G * 0.5
    assert abs((v2[1] - v1[1]) - mu * G * 0.5 * m / big_m) < 0.03 * mu * G * 0.5 * m / big_m
    assert abs(m * v2[0] + big_m * v2[1] - m * v0) < 1e-3 * m * v0  # frictionless ground


def _settle(w: World, seconds: float) -> tuple[float, float]:
    """Step, return (peak kinetic energy, final kinetic energy)."""
    peak = 0.0
    for _ in range(round(seconds * FPS)):
        w.step(1 / FPS, 8)
        peak = max(peak, w.kinetic_energy())
    return peak, w.kinetic_energy()


@pytest.fixture(scope="module")
def stack():
    w = World(backend="cpu")
    for k in range(10):
        w.add_body(box(0.5, 0.5, 0.5), density=500.0, position=(0, 0.5 + k, 0))
    x0 = w.positions()
    peak, final = _settle(w, 10.0)
    return w, x0, peak, final


def drift(w: World, x0: np.ndarray) -> float:
    """The largest distance a body moved from x0 [m] (Euclidean, per body)."""
    return float(np.linalg.norm(w.positions()[: len(x0)] - x0, axis=1).max())


def dropped_box_wakes(w: World, x: float, y: float) -> np.ndarray:
    """Drop a box at 3 m/s from (x, y, 0) for half a second; (n,) bool: bodies awake at some step
    (the dropped box last)."""
    assert w.sleeping().all()  # so every body awake below was woken by the drop
    w.add_body(box(0.5, 0.5, 0.5), density=500.0, position=(x, y, 0), velocity=(0, -3, 0))
    woke = np.zeros(w.num_bodies, dtype=bool)
    for _ in range(12):
        w.step(1 / FPS, 8)
        woke |= ~w.sleeping()
    return woke


def test_stack_of_ten_stands_and_sleeps(stack):
    w, x0, peak, final = stack
    assert drift(w, x0) < 0.01
    assert final < 1e-4 * peak
    assert w.sleeping().all()


def test_dropped_box_wakes_the_stack(stack):
    w, _, _, _ = stack
    top = w.positions()[:, 1].argmax()
    woke = dropped_box_wakes(w, 0.0, 11.5)
    assert woke[top]
    assert woke[:10].sum() >= 2


@pytest.fixture(scope="module")
def pyramid():
    w = World(backend="cpu")
    for row in range(10):
        for k in range(10 - row):
            w.add_body(
                box(0.5, 0.5, 0.5), density=500.0, position=(1.02 * (k + 0.5 * row), 0.5 + row, 0)
            )
    x0 = w.positions()
    peak, final = _settle(w, 10.0)
    return w, x0, peak, final


def test_pyramid_of_ten_rows_stands_and_sleeps(pyramid):
    w, x0, peak, final = pyramid
    assert drift(w, x0) < 0.01
    assert final < 1e-4 * peak
    assert w.sleeping().all()


def test_dropped_box_wakes_the_pyramid(pyramid):
    w, x0, _, _ = pyramid
    top = w.positions()[:, 1].argmax()
    woke = dropped_box_wakes(w, x0[top, 0], 11.5)
    assert woke[top]
    assert woke[: len(x0)].sum() >= 2


def test_head_on_collision_conserves_momentum():
    w = World(gravity=(0, 0, 0), ground=False, backend="cpu")
    a = w.add_body(
        box(0.5, 0.5, 0.5), density=1000.0, position=(-2, 0, 0), velocity=(3, 0, 0), restitution=0.5
    )
    b = w.add_body(
        box(0.4, 0.4, 0.4), density=2000.0, position=(2, 0, 0), velocity=(-2, 0, 0), restitution=0.5
    )
    m = w.masses()
    p0 = m[a] * 3.0 - m[b] * 2.0
    run(w, 2.0)
    v = w.velocities()
    p1 = m @ v[:, 0]
    assert v[a, 0] < v[b, 0]  # they bounced apart
    # the bar is 1 % of the total |p0| (952 kg m/s), which is 19 % of the sum of both bodies' |p|
    # (5048): the stricter of the two, and the one the issue states; the sum of |p| would be the
    # scale only for a total near zero, where 1 % of it means nothing
    assert abs(p1 - p0) < 0.01 * abs(p0)
    assert np.abs(m @ v[:, 1:]).max() < 1e-6 * abs(p0)


def _pile(seed: int) -> World:
    rng = np.random.default_rng(seed)
    w = World(backend="cpu")
    for k in range(12):
        w.add_body(
            box(0.3, 0.2, 0.25),
            density=800.0,
            position=(rng.uniform(-0.4, 0.4), 0.3 + 0.5 * k, rng.uniform(-0.4, 0.4)),
            angular_velocity=rng.normal(0, 1, 3),
        )
    return w


def test_same_inputs_give_bit_identical_results():
    a, b = _pile(1), _pile(1)
    for _ in range(24):
        a.step(1 / FPS, 8)
        b.step(1 / FPS, 8)
    assert np.array_equal(a.positions(), b.positions())
    assert np.array_equal(a.rotations(), b.rotations())
    assert np.array_equal(a.velocities(), b.velocities())


def test_state_round_trip_continues_bit_identically():
    a = _pile(2)
    run(a, 0.5)
    saved = a.state()
    run(a, 0.5)
    b = _pile(2)
    b.load_state(saved)
    run(b, 0.5)
    assert np.array_equal(a.positions(), b.positions())
    assert np.array_equal(a.angular_velocities(), b.angular_velocities())
    assert a.steps == b.steps


def _hull_points(w: World, body: int, local: np.ndarray) -> np.ndarray:
    """(n, 3) world points of a body-frame point set at the body's current pose."""
    q = w.rotations()[body]
    u, s = q[1:], q[0]
    t = 2.0 * np.cross(u, local)
    return w.positions()[body] + local + s * t + np.cross(u, t)


def penetration(pa: np.ndarray, pb: np.ndarray) -> float:
    """Penetration depth of two convex hulls [m] (< 0: their gap): the origin's depth inside
    the Minkowski difference A - B, independent of the narrowphase."""
    from scipy.spatial import ConvexHull

    return float(-ConvexHull((pa[:, None] - pb[None]).reshape(-1, 3)).equations[:, 3].max())


def _crossed_boxes(gravity: tuple[float, float, float], drop: float, speed: float):
    """A fixed box turned 45 deg about z (top edge along z at y = sqrt 2) and a box turned
    45 deg about x above it (bottom edge along x): the edges meet crossed, with no vertex of
    either inside the other."""
    c, s = math.cos(math.pi / 8), math.sin(math.pi / 8)
    w = World(gravity=gravity, ground=False, backend="cpu")
    low = w.add_body(box(0.5, 0.5, 0.5), position=(0, 0, 0), rotation=(c, 0, 0, s), fixed=True)
    top = w.add_body(
        box(0.5, 0.5, 0.5),
        density=1000.0,
        position=(0, 2 * math.sqrt(0.5) + drop, 0),
        rotation=(c, s, 0, 0),
        velocity=(0, -speed, 0),
    )
    return w, low, top


def test_crossed_edges_dropped_rest_on_the_edge():
    w, low, top = _crossed_boxes((0, -G, 0), drop=0.2, speed=2.0)
    corners = box(0.5, 0.5, 0.5)
    deepest, lowest = -1.0, 1e9
    for _ in range(48):
        w.step(1 / FPS, 8)
        pa, pb = _hull_points(w, top, corners), _hull_points(w, low, corners)
        deepest = max(deepest, penetration(pa, pb))
        lowest = min(lowest, pa[:, 1].min())
    # without edge-edge contacts the top box sank 0.43 m into the lower one and was thrown
    # 6 m aside; with them the edges touch, and the top box (centre of mass above the
    # crossing, a vertical normal through it) balances on the crossing at rest
    assert deepest < 0.01
    assert lowest > math.sqrt(2) * 0.5 - 0.01
    assert np.linalg.norm(w.velocities()[top]) < 0.05
    assert abs(w.positions()[top, 1] - 2 * math.sqrt(0.5)) < 0.01


def test_crossed_edges_pushed_together_bounce_without_overlap():
    w, low, top = _crossed_boxes((0, 0, 0), drop=0.3, speed=3.0)
    corners = box(0.5, 0.5, 0.5)
    deepest = -1.0
    for _ in range(24):
        w.step(1 / FPS, 8)
        deepest = max(
            deepest, penetration(_hull_points(w, top, corners), _hull_points(w, low, corners))
        )
    assert deepest < 0.01
    v = w.velocities()[top]
    assert v[1] > 0.0  # it came back off the fixed box's edge ...
    assert np.linalg.norm(v[[0, 2]]) < 1e-6  # ... straight up: a vertical normal, no torque


def test_box_on_box_rests_flat_on_a_face_manifold():
    w = World(backend="cpu")
    w.add_body(box(0.5, 0.5, 0.5), position=(0, 0.5, 0), fixed=True)
    b = w.add_body(box(0.4, 0.3, 0.4), density=800.0, position=(0.1, 1.3, 0.05))
    npairs = w._detect(1 / FPS / 8)  # touching: the manifold of the first substep
    pairs = w._dev["pairs"].to_numpy()[:npairs]
    assert pairs[:, 2].max() >= 4  # the resting face gives its corners, not one edge point
    run(w, 1.0)
    assert abs(w.positions()[b, 1] - 1.3) < 2e-3
    assert 1.0 - abs(w.rotations()[b, 0]) < 1e-6  # still flat


def test_slab_resting_on_an_edge_strip_tips_without_gaining_energy():
    """A slab whose centre of mass hangs beside its only support (a beam under one edge strip,
    the fractured building's floor once its columns are gone) must tip off, gaining no more
    kinetic energy than its fall releases, and not sink into the beam. The manifold's depth was
    the slab's lowest corner applied at every point (the tilt pushed the wrong way: 4.5x the
    released energy in 5 substeps) and the centroid row held the slab up without turning."""
    w = World(backend="cpu")
    w.add_body(box(2.8, 0.225, 0.15), position=(3.0, 3.075, 12.0), fixed=True)
    tilt = 0.004  # rad about z: the far end of the strip lower, as a fractured slab lies
    slab = w.add_body(
        box(1.75, 0.1, 1.263),
        density=2400.0,
        position=(1.55, 3.4 + 1.35 * tilt + 0.1 * (1 - math.cos(tilt)), 10.937),
        rotation=(math.cos(tilt / 2), 0.0, 0.0, -math.sin(tilt / 2)),
    )
    m = w.masses()[slab]
    y0 = w.positions()[slab, 1]
    beam = box(2.8, 0.225, 0.15) + (3.0, 3.075, 12.0)
    deepest = 0.0
    for _ in range(12):
        w.step(1 / FPS, 8)
        drop = y0 - w.positions()[slab, 1]
        assert w.kinetic_energy() <= m * G * max(drop, 0.0) * 1.05 + 1.0
        deepest = max(deepest, penetration(_hull_points(w, slab, box(1.75, 0.1, 1.263)), beam))
    assert deepest < 0.01
    assert np.linalg.norm(w.angular_velocities()[slab]) > 0.5  # it tipped off the strip


_PILE = """
import sys
import numpy as np
from destruct.world import World
from sim_kernels.solve import NGROUPS

rng = np.random.default_rng(3)
w = World(backend="cpu", threads=int(sys.argv[1]))
for k in range(60):  # boxes tumbling into a heap 3 m wide: it spans every slab of the groups
    w.add_body(
        np.array([[sx * 0.3, sy * 0.2, sz * 0.25] for sx in (-1, 1) for sy in (-1, 1)
                  for sz in (-1, 1)]),
        position=(rng.uniform(-1.5, 1.5), 0.3 + 0.25 * k, rng.uniform(-0.5, 0.5)),
        angular_velocity=rng.normal(0, 1, 3),
    )
groups = 0
for _ in range(48):
    w.step(1 / 24, 8)
    per_key = np.diff(w._dev["ustart"].to_numpy())  # units per (group, layer)
    groups = np.maximum(groups, per_key.reshape(NGROUPS, -1).sum(axis=1))
np.savez(sys.argv[2], x=w.positions(), q=w.rotations(), v=w.velocities(), groups=groups)
"""


def test_one_and_two_threads_give_bit_identical_results(tmp_path):
    """The sweeps run groups of constraints in parallel (sim_kernels/solve.py): the groups are
    fixed by the scene, not the thread count, so the result is too."""
    out = []
    for threads in (1, 2):
        path = tmp_path / f"t{threads}.npz"
        subprocess.run(
            [sys.executable, "-c", _PILE, str(threads), str(path)], check=True, timeout=300
        )
        out.append(np.load(path))
    one, two = out
    assert one["x"][:, 1].max() < 2.0  # the boxes fell into a heap
    assert (one["groups"][:8] > 0).sum() >= 6  # the contacts spread over the slabs
    assert one["groups"][8:15].sum() > 0  # and their boundaries
    for key in ("x", "q", "v"):
        assert np.array_equal(one[key], two[key]), key


def test_a_fast_box_stops_on_a_resting_box_without_sinking_in():
    """Dropped at 40 m/s from 1 mm above a box resting on the ground, a box would move 21 cm
    into it in one substep. The overlap a substep's own motion makes is removed whole; only an
    older overlap is pushed out at the capped MAX_DEPENETRATION rate (with the cap on all of
    it, the box sank 1.6 cm in)."""
    w = World(backend="cpu")
    w.add_body(box(0.5, 0.5, 0.5), density=500.0, position=(0, 0.5, 0))
    w.add_body(box(0.5, 0.5, 0.5), density=500.0, position=(0, 1.501, 0), velocity=(0, -40, 0))
    deepest = 0.0
    for _ in range(12):
        w.step(1 / FPS, 8)
        top_of_low = _hull_points(w, 0, box(0.5, 0.5, 0.5))[:, 1].max()
        deepest = max(deepest, top_of_low - _hull_points(w, 1, box(0.5, 0.5, 0.5))[:, 1].min())
    assert deepest < 0.005

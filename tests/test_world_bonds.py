"""Glue bonds: they carry load and break on stress (tension, shear, compression, bending),
with the analytic thresholds of strength x area (DESIGN.md section 6)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("taichi")

from destruct.world import World
from sim_kernels.bonds import IMPACT_TOUGHNESS_LENGTH

FPS = 24
G = 9.81
AREA = 0.01  # m^2: a small glued patch, so strengths in Pa stay plausible
STRONG = 1e12  # Pa: a limit that never governs


def cube(h: float = 0.5) -> np.ndarray:
    return np.array(
        [[sx * h, sy * h, sz * h] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    )


def broken_after(w: World, seconds: float = 1.0) -> bool:
    for _ in range(round(seconds * FPS)):
        w.step(1 / FPS, 8)
    return bool(w.bond_broken()[0])


def hanging(load_over_capacity: float) -> World:
    """A 1000 kg cube glued under a fixed cube: the bond carries its weight in tension."""
    w = World(ground=False, backend="cpu")
    top = w.add_body(cube(), position=(0, 2, 0), fixed=True)
    low = w.add_body(cube(), density=1000.0, position=(0, 1, 0))
    weight = 1000.0 * G
    tensile = weight / load_over_capacity / AREA
    w.add_bond(
        low,
        top,
        point=(0, 1.5, 0),
        normal=(0, 1, 0),
        area=AREA,
        tensile=tensile,
        shear=STRONG,
        compressive=STRONG,
    )
    return w


@pytest.mark.parametrize("ratio, breaks", [(0.9, False), (1.12, True)])
def test_tension_holds_below_and_breaks_above_tensile_times_area(ratio, breaks):
    w = hanging(ratio)
    assert broken_after(w) is breaks
    if not breaks:
        assert abs(w.bond_stress_ratio()[0] - ratio) < 0.02
        assert abs(w.positions()[1, 1] - 1.0) < 1e-3  # it hangs where it was glued
    else:
        assert w.positions()[1, 1] < 0.5  # and falls once broken


def test_parallel_bonds_share_a_load_by_stiffness_a_sliver_included():
    """A hanging cube held by a full bond and a sliver 1000x smaller at the same point: each
    takes its stiffness share (E A / L), so both see the same tensile stress. A rigid
    velocity pass would hand the sliver whatever it met first, far beyond its strength."""
    w = World(ground=False, backend="cpu")
    top = w.add_body(cube(), position=(0, 2, 0), fixed=True)
    low = w.add_body(cube(), density=1000.0, position=(0, 1, 0))
    tensile = 1000.0 * G / 0.9 / (AREA * 1.001)  # the pair loaded to 0.9 of its strength
    for area in (AREA, AREA / 1000):
        w.add_bond(low, top, point=(0, 1.5, 0), normal=(0, 1, 0), area=area, tensile=tensile,
                   shear=STRONG, compressive=STRONG, modulus=30e9)  # fmt: skip
    assert not broken_after(w)
    assert np.allclose(w.bond_stress_ratio(), 0.9, atol=0.02)


def side_glued(load_over_capacity: float) -> World:
    """A cube glued to the side of a fixed cube: its weight loads the bond in shear."""
    w = World(ground=False, backend="cpu")
    wall = w.add_body(cube(), position=(0, 1, 0), fixed=True)
    side = w.add_body(cube(), density=1000.0, position=(1, 1, 0))
    shear = 1000.0 * G / load_over_capacity / AREA
    w.add_bond(
        side,
        wall,
        point=(0.5, 1, 0),
        normal=(-1, 0, 0),
        area=AREA,
        tensile=STRONG,
        shear=shear,
        compressive=STRONG,
    )
    return w


@pytest.mark.parametrize("ratio, breaks", [(0.9, False), (1.12, True)])
def test_shear_holds_below_and_breaks_above_shear_times_area(ratio, breaks):
    w = side_glued(ratio)
    assert broken_after(w) is breaks
    if not breaks:
        assert abs(w.bond_stress_ratio()[0] - ratio) < 0.02


def pressed(load_over_capacity: float) -> World:
    """A cube glued on top of a fixed cube with a tiny tensile strength: its weight presses."""
    w = World(ground=False, backend="cpu")
    base = w.add_body(cube(), position=(0, 0, 0), fixed=True)
    top = w.add_body(cube(), density=1000.0, position=(0, 1, 0))
    compressive = 1000.0 * G / load_over_capacity / AREA
    w.add_bond(
        top,
        base,
        point=(0, 0.5, 0),
        normal=(0, -1, 0),
        area=AREA,
        tensile=1.0,
        shear=STRONG,
        compressive=compressive,
    )
    return w


@pytest.mark.parametrize("ratio, breaks", [(0.9, False), (1.12, True)])
def test_compression_with_tiny_tensile_strength(ratio, breaks):
    w = pressed(ratio)
    assert broken_after(w) is breaks
    if not breaks:
        assert abs(w.bond_stress_ratio()[0] - ratio) < 0.02


def test_overloaded_cantilever_breaks_first_at_its_root():
    """Six 600 kg segments glued end to end off a wall. The bending moment at bond k is
    m g (sum of the arms beyond it): 18, 12.5, 8, 4.5, 2, 0.5 x m g [m], so with the root at
    1.15x its tensile limit (6 M / s^3 with s = 0.5 m) the next bond sits at 0.8x (the
    sudden load overshoots the static one by ~15 %)."""
    w = World(ground=False, backend="cpu")
    wall = w.add_body(cube(), position=(0, 5, 0), fixed=True)
    seg = np.array(
        [[sx * 0.5, sy * 0.25, sz * 0.25] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    )
    prev = wall
    n = 6
    for k in range(n):
        b = w.add_body(seg, density=2400.0, position=(1.0 + k, 5, 0))
        w.add_bond(
            b,
            prev,
            point=(0.5 + k, 5, 0),
            normal=(-1, 0, 0),
            area=0.25,
            tensile=4.43e6,
            shear=1e6,
            compressive=1e7,
        )
        prev = b
    first: np.ndarray | None = None
    for _ in range(48):
        w.step(1 / FPS, 8)
        new = w.new_breaks()
        if len(new) and first is None:
            first = new
    assert first is not None, "the overloaded cantilever never broke"
    assert first.tolist() == [0]  # the root bond, alone


def struck(energy_over_toughness: float, *, struck_first: bool) -> World:
    """A 1000 kg cube glued to the side of a fixed cube, hit head-on along the bond normal by an
    8 kg cube at 5 m/s (no gravity). The tensile strength makes the collision energy
    (0.5 mu v^2, mu the reduced mass) ``energy_over_toughness`` x the bond's impact toughness,
    tensile x area x IMPACT_TOUGHNESS_LENGTH; shear and compression never govern. The struck
    cube is the bond's first body or its second."""
    w = World(gravity=(0, 0, 0), ground=False, backend="cpu")
    wall = w.add_body(cube(), position=(0, 0, 0), fixed=True)
    block = w.add_body(cube(), density=1000.0, position=(1, 0, 0))
    bullet = w.add_body(cube(0.1), density=1000.0, position=(2.5, 0, 0), velocity=(-5, 0, 0))
    m = w.masses()
    energy = 0.5 * m[block] * m[bullet] / (m[block] + m[bullet]) * 5.0**2
    tensile = energy / energy_over_toughness / (AREA * IMPACT_TOUGHNESS_LENGTH)
    a, b, normal = (block, wall, (-1, 0, 0)) if struck_first else (wall, block, (1, 0, 0))
    w.add_bond(a, b, point=(0.5, 0, 0), normal=normal, area=AREA, tensile=tensile,
               shear=STRONG, compressive=STRONG)  # fmt: skip
    return w


def steps_peak_ratio(w: World, seconds: float = 1.0) -> float:
    """Step; return the largest stress ratio seen at a step's end."""
    peak = 0.0
    for _ in range(round(seconds * FPS)):
        w.step(1 / FPS, 8)
        peak = max(peak, float(w.bond_stress_ratio()[0]))
    return peak


@pytest.mark.parametrize("struck_first", [True, False])
def test_impact_damage_is_collision_energy_over_toughness_and_breaks_below_strength(struck_first):
    """An impact adds energy / (tensile x area x IMPACT_TOUGHNESS_LENGTH) of damage, whichever
    body of the bond is hit; at 1.2x the toughness the bond breaks although its stress stays
    a hundredth of its strength (a static load that small never breaks it)."""
    w = struck(0.5, struck_first=struck_first)
    peak = steps_peak_ratio(w)
    assert not w.bond_broken()[0]
    assert abs(w.bond_damage()[0] - 0.5) < 1e-3
    assert peak < 0.01
    w = struck(1.2, struck_first=struck_first)
    peak = steps_peak_ratio(w)
    assert w.bond_broken()[0] and w.bond_damage()[0] == 1.0
    assert peak < 0.05


@pytest.mark.parametrize("struck_first", [True, False])
def test_held_bonds_take_no_impact_damage(struck_first):
    """While bonds are held (World.breakable = False, the pre-roll) an impact of 1.2x the
    toughness leaves no damage on either body's side, so the bond survives the release."""
    w = struck(1.2, struck_first=struck_first)
    w.breakable = False
    steps_peak_ratio(w)
    assert w.bond_damage()[0] == 0.0 and not w.bond_broken()[0]
    w.breakable = True
    steps_peak_ratio(w, 0.5)
    assert w.bond_damage()[0] == 0.0 and not w.bond_broken()[0]


def test_charge_impulse_falls_off_and_stops_at_its_radius():
    w = World(gravity=(0, 0, 0), ground=False, backend="cpu")
    for x in (0.5, 1.0, 2.0):
        w.add_body(cube(0.1), density=1000.0, position=(x, 0, 0))
    m = w.masses()[0]
    w.apply_charge((0, 0, 0), radius=1.5, impulse=100.0)
    v = w.velocities()
    share = np.array([(1 - r / 1.5) ** 2 for r in (0.5, 1.0)])
    expected = 100.0 * share / share.sum() / m  # the total impulse, shared by falloff
    np.testing.assert_allclose(v[:2, 0], expected, rtol=1e-12)
    assert v[2, 0] == 0.0 and np.abs(v[:, 1:]).max() == 0.0
    assert m * v[:, 0].sum() == pytest.approx(100.0)

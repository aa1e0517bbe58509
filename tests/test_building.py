"""Procedural buildings: element counts, watertight parts that touch but never overlap."""

import numpy as np
import pytest

from destruct.building import (
    BEAM_DEPTH,
    COLUMN_WIDTH,
    SLAB_THICKNESS,
    box_mesh,
    build_procedural,
    element_count,
)
from destruct.errors import UserError
from destruct.meshio import box_pairs, to_manifold


def test_box_mesh_is_exact_and_outward():
    m = box_mesh((0.1, 0.2, 0.3), (1.1, 2.2, 3.3))
    assert m.is_watertight and m.is_winding_consistent
    assert m.volume == pytest.approx(1.0 * 2.0 * 3.0, rel=1e-14)
    np.testing.assert_array_equal(m.bounds, [[0.1, 0.2, 0.3], [1.1, 2.2, 3.3]])


def test_element_counts_and_materials():
    parts = build_procedural(
        floors=2,
        bays_x=2,
        bays_z=1,
        windows=True,
        interior_walls=True,
        material="concrete",
        materials={"column": "reinforced_concrete", "window": "glass", "wall": "brick"},
    )
    kinds = [p.kind for p in parts]
    per_floor = {
        "column": 3 * 2,  # (bays_x + 1) * (bays_z + 1)
        "beam": 2 * 2 + 3 * 1,  # along x on 2 lines, along z on 3 lines
        "slab": 1,
        "wall": 2 * (2 + 1) + 1,  # perimeter bays + one interior grid line of one bay
        "window": 2 * (2 + 1),
    }
    for kind, n in per_floor.items():
        assert kinds.count(kind) == 2 * n, kind
    mats = {p.kind: p.material for p in parts}
    assert mats == {
        "column": "reinforced_concrete",
        "beam": "concrete",
        "slab": "concrete",
        "wall": "brick",
        "window": "glass",
    }
    assert len(parts) == element_count(2, 2, 1, windows=True, interior_walls=True)
    names = [p.name for p in parts]
    assert len(set(names)) == len(names) and "column_00" in names and "window_11" in names


def test_parts_are_volumes_that_touch_but_never_overlap():
    parts = build_procedural(floors=2, bays_x=2, bays_z=1, bay=4.0, story=3.0)
    mans = [to_manifold(p.mesh) for p in parts]
    for p, m in zip(parts, mans):
        assert p.mesh.is_watertight and p.mesh.is_winding_consistent and p.mesh.volume > 0
        assert not m.is_empty() and m.volume() == pytest.approx(p.mesh.volume, rel=1e-12)
    bounds = np.array([p.mesh.bounds for p in parts])
    pairs = box_pairs(bounds[:, 0], bounds[:, 1], tol=1e-9)
    assert len(pairs) > len(parts)  # plenty of touching neighbours
    for i, j in pairs:
        assert (mans[i] ^ mans[j]).volume() < 1e-12
    # the union is the sum: no volume counted twice
    union = mans[0]
    for m in mans[1:]:
        union = union + m
    assert union.volume() == pytest.approx(sum(p.mesh.volume for p in parts), rel=1e-12)


def test_stands_on_the_ground_with_the_expected_size():
    floors, bay, story = 3, 5.0, 3.2
    parts = build_procedural(floors=floors, bays_x=2, bays_z=2, bay=bay, story=story)
    lo = np.min([p.mesh.bounds[0] for p in parts], axis=0)
    hi = np.max([p.mesh.bounds[1] for p in parts], axis=0)
    c2 = COLUMN_WIDTH / 2
    np.testing.assert_allclose(lo, [-c2, 0.0, -c2], atol=1e-12)
    np.testing.assert_allclose(hi, [2 * bay + c2, floors * story, 2 * bay + c2], atol=1e-12)
    grounded = {p.kind for p in parts if p.mesh.bounds[0, 1] == 0.0}
    assert grounded == {"column", "wall"}
    # columns reach the slab: a column's top is exactly a slab's underside
    tops = {round(p.mesh.bounds[1, 1], 12) for p in parts if p.kind == "column"}
    bottoms = {round(p.mesh.bounds[0, 1], 12) for p in parts if p.kind == "slab"}
    assert tops == bottoms == {round((f + 1) * story - SLAB_THICKNESS, 12) for f in range(floors)}
    beams = [p for p in parts if p.kind == "beam"]
    assert all(p.mesh.extents[1] == pytest.approx(BEAM_DEPTH) for p in beams)


def test_window_pane_fills_the_opening():
    parts = build_procedural(floors=1, bays_x=1, bays_z=1, windows=True)
    walls = [p for p in parts if p.kind == "wall"]
    panes = [p for p in parts if p.kind == "window"]
    assert len(walls) == len(panes) == 4
    for wall, pane in zip(walls, panes):
        solid = np.prod(wall.mesh.extents)
        hole = solid - wall.mesh.volume  # the opening through the wall
        thickness = wall.mesh.extents.min()
        assert pane.mesh.volume == pytest.approx(hole * pane.mesh.extents.min() / thickness)
    no_windows = build_procedural(floors=1, bays_x=1, bays_z=1, windows=False)
    assert not any(p.kind == "window" for p in no_windows)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"floors": 0}, "building.procedural.floors must be an integer 1..200"),
        ({"bays_x": 2.5}, "building.procedural.bays_x"),
        ({"story": 1.2}, "building.procedural.story must be"),
        ({"bay": 0.6}, "building.procedural.bay must be"),
        ({"bay": float("nan")}, "building.procedural.bay must be"),
        ({"floors": 200, "bays_x": 50, "bays_z": 50}, "more than the 100000-piece limit"),
    ],
)
def test_bad_dimensions_are_refused(kwargs, words):
    with pytest.raises(UserError, match=words):
        build_procedural(**kwargs)

"""Voronoi fracture, pieces, bonds and the fracture/ artifact (issue 3)."""

import manifold3d as m3
import numpy as np
import pytest
import trimesh
from scipy.spatial import ConvexHull

from destruct.building import Part, box_mesh, build_procedural
from destruct.errors import UserError
from destruct.fracture import (
    CHARGE_DETAIL_FACTOR,
    HULL_MAX_DEPTH,
    MAX_CUT_PLANES,
    MAX_HULL_VERTS,
    MAX_PIECES,
    _cut_planes,
    _detail_of,
    _hull_of,
    allocate_seeds,
    convex_hulls,
    fracture_parts,
    fracture_with_seeds,
    prepare,
    read_fracture,
    run_prepare,
    scene_arrays,
    simplify_hull,
    weighted_volumes,
    write_fracture,
)
from destruct.io import load_json, load_npz
from destruct.materials import PRESETS
from destruct.meshio import points_inside


def _box_part(lo, hi, name="part_00", material="concrete"):
    return Part(name, "part", material, box_mesh(lo, hi))


def _l_part():
    """An L-shaped block: a 2 x 1 x 1 foot and a 1 x 1 x 1 riser on one end (volume 3)."""
    a = m3.Manifold.cube([2.0, 1.0, 1.0])
    b = m3.Manifold.cube([1.0, 1.0, 1.0]).translate([0.0, 1.0, 0.0])
    mesh = (a + b).to_mesh64()
    return Part(
        "lshape_00",
        "part",
        "brick",
        trimesh.Trimesh(
            mesh.vert_properties[:, :3], mesh.tri_verts.astype(np.int64), process=False
        ),
    )


def _hollow_part():
    """A 2 m box with a 1 m cavity (volume 7): the outer shell plus an inward-facing inner one."""
    outer = box_mesh((-1, 0, -1), (1, 2, 1))
    inner = box_mesh((-0.5, 0.5, -0.5), (0.5, 1.5, 0.5))
    inner.invert()
    return Part("hollow_00", "part", "concrete", trimesh.util.concatenate([outer, inner]))


def _manifold(mesh):
    return m3.Manifold(
        m3.Mesh64(
            vert_properties=np.array(mesh.vertices, dtype=np.float64),
            tri_verts=np.array(mesh.faces, dtype=np.uint64),
        )
    )


def _assert_sound(scene, sample_pairs=40):
    """Volume conserved, every piece a closed volume, bonded and sampled pairs disjoint."""
    assert scene.volume_error < 1e-6
    for p in scene.pieces:
        assert p.mesh.is_watertight and p.mesh.is_winding_consistent
        assert p.volume > 0 and p.mesh.volume == pytest.approx(p.volume, rel=1e-9)
        assert len(p.interior) == len(p.mesh.faces)
    mans = [_manifold(p.mesh) for p in scene.pieces]
    assert all(not m.is_empty() for m in mans)
    # collision hulls hug their piece: bonded neighbours' hulls do not overlap at rest
    hulls = [[m3.Manifold.hull_points(h) for h in p.hulls] for p in scene.pieces]
    for i, j in (b for b in scene.bonds.pairs if b[1] >= 0):
        common = sum((a ^ b).volume() for a in hulls[i] for b in hulls[j])
        assert common < 1e-6 * min(scene.pieces[i].volume, scene.pieces[j].volume)
    rng = np.random.default_rng(0)
    pairs = [tuple(b) for b in scene.bonds.pairs if b[1] >= 0]
    pairs += [tuple(rng.choice(len(mans), 2, replace=False)) for _ in range(sample_pairs)]
    for i, j in pairs:
        common = (mans[i] ^ mans[j]).volume()
        assert common < 1e-9 * min(scene.pieces[i].volume, scene.pieces[j].volume)


@pytest.mark.parametrize(
    "parts, n",
    [
        (build_procedural(floors=1, bays_x=1, bays_z=1, windows=True), 40),
        ([_l_part()], 25),
        ([_hollow_part()], 25),
        ([Part("drum_00", "part", "wood", trimesh.creation.cylinder(0.8, 2.0, sections=24))], 20),
    ],
    ids=["procedural", "l-shape", "hollow-box", "cylinder"],
)
def test_volume_conserved_watertight_disjoint(parts, n):
    scene = fracture_parts(parts, n, seed=3)
    assert len(scene.pieces) >= n
    assert scene.input_volume == pytest.approx(sum(p.mesh.volume for p in parts), rel=1e-12)
    _assert_sound(scene)


def test_hollow_box_keeps_its_cavity():
    scene = fracture_parts([_hollow_part()], 12, seed=1)
    assert scene.input_volume == pytest.approx(7.0, rel=1e-12)
    assert scene.pieces_volume == pytest.approx(7.0, rel=1e-9)
    # no piece reaches into the cavity: the cavity centre is inside no piece
    for p in scene.pieces:
        assert not points_inside(p.mesh, [[0.0, 1.0, 0.0]])[0]


def test_two_halves_of_a_box_one_bond_with_the_cut_area():
    part = _box_part((0, 0, 0), (2, 1, 1))
    scene = fracture_with_seeds([part], [np.array([[0.5, 0.5, 0.5], [1.5, 0.5, 0.5]])])
    inner = scene.bonds.pairs[:, 1] >= 0
    assert inner.sum() == 1
    k = np.flatnonzero(inner)[0]
    assert tuple(scene.bonds.pairs[k]) == (0, 1)
    assert scene.bonds.areas[k] == pytest.approx(1.0, rel=1e-9)
    np.testing.assert_allclose(scene.bonds.points[k], [1.0, 0.5, 0.5], atol=1e-9)
    np.testing.assert_allclose(scene.bonds.normals[k], [1.0, 0.0, 0.0], atol=1e-12)
    # the cut faces, and only they, are interior: 1 m^2 on each half
    for p in scene.pieces:
        areas = p.mesh.area_faces
        assert areas[p.interior].sum() == pytest.approx(1.0, rel=1e-12)
        assert np.allclose(p.mesh.triangles_center[p.interior][:, 0], 1.0)
        assert p.volume == pytest.approx(1.0, rel=1e-12)


def test_oblique_cut_bond_area_matches_the_section():
    part = _box_part((0, 0, 0), (2, 1, 1))
    a, b = np.array([0.6, 0.3, 0.4]), np.array([1.3, 0.7, 0.6])
    scene = fracture_with_seeds([part], [np.stack([a, b])], anchor_to_ground=False)
    assert len(scene.bonds) == 1
    n = (b - a) / np.linalg.norm(b - a)
    # the section of a box is a convex polygon: the hull of the plane's edge crossings
    segments = trimesh.intersections.mesh_plane(part.mesh, n, (a + b) / 2)
    pts = segments.reshape(-1, 3)
    u = np.cross(n, [0, 0, 1.0])
    u /= np.linalg.norm(u)
    section_area = ConvexHull(np.column_stack([pts @ u, pts @ np.cross(n, u)])).volume
    assert scene.bonds.areas[0] == pytest.approx(section_area, rel=1e-9)
    np.testing.assert_allclose(scene.bonds.normals[0], n, atol=1e-9)


def test_column_on_slab_is_bonded_and_grounded():
    slab = Part("slab_00", "slab", "concrete", box_mesh((-2, 0, -2), (2, 0.2, 2)))
    column = Part("column_00", "column", "steel", box_mesh((-0.2, 0.2, -0.2), (0.2, 3, 0.2)))
    scene = fracture_with_seeds([slab, column], [np.zeros((1, 3)) + [0, 0.1, 0], [[0, 1, 0]]])
    b = scene.bonds
    assert [tuple(p) for p in b.pairs] == [(0, 1), (0, -1)]
    assert b.areas[0] == pytest.approx(0.16, rel=1e-9)
    np.testing.assert_allclose(b.points[0], [0, 0.2, 0], atol=1e-9)
    np.testing.assert_allclose(b.normals[0], [0, 1, 0], atol=1e-12)
    # the weaker material (concrete, not steel) sets the strength of the mixed bond
    assert b.tensile[0] == PRESETS["concrete"].tensile
    # ground bond: the slab's 16 m^2 underside, centred, normal towards the ground
    assert b.areas[1] == pytest.approx(16.0, rel=1e-12)
    np.testing.assert_allclose(b.points[1], [0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(b.normals[1], [0, -1, 0])
    assert scene.ground_bonds == 1
    assert len(fracture_with_seeds([slab, column], [[[0, 0.1, 0]], [[0, 1, 0]]],
                                   anchor_to_ground=False).bonds) == 1  # fmt: skip


def test_procedural_building_bonds_every_piece():
    scene = fracture_parts(build_procedural(floors=2, bays_x=1, bays_z=1), 60, seed=0)
    pairs = scene.bonds.pairs
    # the bond graph (with the ground) connects every piece: nothing floats
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(range(-1, len(scene.pieces)))
    g.add_edges_from(map(tuple, pairs))
    assert nx.is_connected(g)
    assert np.all(scene.bonds.areas > 0)
    ground = pairs[pairs[:, 1] < 0, 0]
    assert all(scene.pieces[i].mesh.bounds[0, 1] == 0.0 for i in ground)
    assert {scene.pieces[i].kind for i in ground} <= {"column", "wall"}


def test_same_seed_same_pieces_other_seed_different():
    part = [_l_part()]
    a, b, c = (fracture_parts(part, 15, seed=s) for s in (7, 7, 8))
    va = [p.mesh.vertices for p in a.pieces]
    assert all(np.array_equal(x, y.mesh.vertices) for x, y in zip(va, b.pieces))
    assert np.array_equal(a.bonds.areas, b.bonds.areas)
    assert not all(
        x.shape == y.mesh.vertices.shape and np.allclose(x, y.mesh.vertices)
        for x, y in zip(va, c.pieces)
    )


def test_pieces_near_a_charge_are_smaller():
    bar = _box_part((-5, 0, -0.5), (5, 1, 0.5))
    charge = ((-3.5, 0.5, 0.0), 1.5, 4.0)
    scene = fracture_parts([bar], 60, seed=2, detail=[charge])
    com = np.array([p.com for p in scene.pieces])
    vol = np.array([p.volume for p in scene.pieces])
    near = np.linalg.norm(com - charge[0], axis=1) < charge[1]
    far = com[:, 0] > 0
    assert near.sum() >= 5 and far.sum() >= 5
    assert vol[near].mean() < 0.5 * vol[far].mean()
    assert scene.volume_error < 1e-6


@pytest.mark.parametrize(
    "weights, n, expect",
    [
        ([1, 3], 40, [10, 30]),  # exact shares
        ([1, 3], 41, [10, 31]),  # 10.25 / 30.75: the spare seed goes to the larger remainder
        ([1, 3], 42, [11, 31]),  # 10.5 / 31.5: a tie goes to the first part
        ([0.01, 1, 1], 10, [1, 5, 4]),  # share 0.033 -> 1 seed; the other two split 9
        ([1, 1, 1], 2, [1, 1, 1]),  # at least one seed per part, even over the target
    ],
)
def test_seeds_are_allocated_by_largest_remainder(weights, n, expect):
    counts = allocate_seeds(np.array(weights, dtype=float), n)
    assert counts.tolist() == expect and counts.sum() == max(n, len(weights))


def test_seeds_per_part_follow_volume_weighted_by_detail():
    small = _box_part((0, 0, 0), (1, 1, 1), name="small_00")  # 1 m^3
    big = _box_part((10, 0, 0), (13, 1, 1), name="big_00")  # 3 m^3
    rng = np.random.default_rng(0)
    assert weighted_volumes([small, big], [], rng).tolist() == [1.0, 3.0]
    for seed in (0, 1, 2):
        scene = fracture_parts([small, big], 40, seed=seed)
        assert [e["pieces"] for e in scene.elements] == [10, 30]
        assert sum(p.element == "big_00" for p in scene.pieces) == 30
    # a detail point whose radius (2 m) covers the whole small box (corners 0.87 m away)
    # triples its density there exactly; the big box is beyond 2 radii, so unweighted
    detail = [((0.5, 0.5, 0.5), 2.0, 3.0)]
    assert weighted_volumes([small, big], detail, rng).tolist() == [3.0, 3.0]
    scene = fracture_parts([small, big], 40, seed=0, detail=detail)
    assert [e["pieces"] for e in scene.elements] == [20, 20]
    assert scene.volume_error < 1e-6


def _charge_shot(charges):
    """Two floors, 2 x 1 bays of 4 m (8 x 6 x 4 m), 150 pieces, seed 0."""
    from destruct.shot import shot_from_dict

    procedural = {"floors": 2, "bays_x": 2, "bays_z": 1, "bay": 4.0, "story": 3.0}
    return shot_from_dict(
        {
            "shot": {"seed": 0},
            "building": {"procedural": procedural},
            "fracture": {"pieces": 150},
            "charges": charges,
        }
    )


def test_a_shot_charge_makes_pieces_near_it_smaller():
    centre, radius = np.array([0.0, 1.5, 0.0]), 2.0  # at the corner column, ground floor
    charge = {"time": 0.1, "position": centre.tolist(), "radius": radius, "impulse": 100.0}
    shot = _charge_shot([charge])
    assert _detail_of(shot) == [((0.0, 1.5, 0.0), 2.0, CHARGE_DETAIL_FACTOR)]

    def near_far(scene):
        com = np.array([p.com for p in scene.pieces])
        vol = np.array([p.volume for p in scene.pieces])
        d = np.linalg.norm(com - centre, axis=1)
        near, far = d < radius, d > 2 * radius  # inside the charge, beyond its fade
        return near.sum(), vol[near].mean() / vol[far].mean()

    scene = prepare(shot)
    assert scene.volume_error < 1e-6
    n_near, ratio = near_far(scene)
    # measured over seeds 0-3: 22-25 pieces near, mean volume 0.28-0.30 x the far mean
    assert n_near >= 15 and ratio < 0.5
    # the same building without the charge: 7-9 pieces there, ratio 0.91-1.19
    n_plain, plain_ratio = near_far(prepare(_charge_shot([])))
    assert n_near > 2 * n_plain and plain_ratio > 0.7


def test_far_from_convex_piece_gets_a_compound_of_hulls():
    thin_l = Part(
        "l_00",
        "part",
        "concrete",
        _mesh_of(m3.Manifold.cube([2, 0.2, 1]) + m3.Manifold.cube([0.2, 2, 1])),
    )
    scene = fracture_with_seeds([thin_l], [[[0.1, 0.1, 0.5]]])
    (p,) = scene.pieces
    assert p.volume == pytest.approx(2 * 0.2 + 0.2 * 1.8, rel=1e-12)
    hulls = [ConvexHull(h) for h in p.hulls]
    # cut along the plane of its inner face: two exact boxes, no hull bulges out of the piece
    assert len(hulls) == 2
    assert sum(h.volume for h in hulls) == pytest.approx(p.volume, rel=1e-9)
    # the hulls cover the piece: points inside it are inside some hull
    rng = np.random.default_rng(0)
    pts = rng.random((4000, 3)) * [2, 2, 1]
    pts = pts[points_inside(p.mesh, pts)]
    assert len(pts) > 500
    inside_any = np.zeros(len(pts), bool)
    for h in hulls:
        inside_any |= np.all(pts @ h.equations[:, :3].T + h.equations[:, 3] <= 1e-9, axis=1)
    assert inside_any.all()
    # a convex piece keeps a single hull equal to itself
    (box,) = fracture_with_seeds([_box_part((0, 0, 0), (1, 1, 1))], [[[0.5] * 3]]).pieces
    assert len(box.hulls) == 1 and ConvexHull(box.hulls[0]).volume == pytest.approx(1.0)


def test_a_finely_tessellated_concave_piece_tries_a_bounded_set_of_cut_planes():
    # a block with a 400-sided round groove: 200 concave-edge planes, one per facet
    groove = m3.Manifold.cube([2, 2, 1]) - m3.Manifold.cylinder(
        3, 0.8, circular_segments=400
    ).translate([1, 1, -1])
    planes = _cut_planes(groove)
    assert len(planes) == MAX_CUT_PLANES
    # spread along the groove: the chosen facet normals turn through most of its half circle
    angles = np.degrees([np.arctan2(n[1], n[0]) % np.pi for n, _ in planes])
    assert np.ptp(angles) > 150
    hulls = convex_hulls(groove, groove.volume())
    assert 2 <= len(hulls) <= 2**3
    total = sum(ConvexHull(h).volume for h in hulls)
    assert groove.volume() * (1 - 1e-9) <= total < 0.75 * _hull_of(groove)[1]


def test_an_arc_of_a_finely_tessellated_tube_halves_into_arcs_not_crumbs():
    """A 60-degree arc of a 512-sided thick tube: each cut adds one hull (across the arc, not
    along a facet's plane, which cuts off both horns: 15 hulls, some of 0.06 % of the arc), so
    2^HULL_MAX_DEPTH arcs of similar size, their hulls 0.5 % more than the arc (its single
    hull: 31 %)."""
    tube = m3.Manifold.cylinder(2, 5, circular_segments=512) - m3.Manifold.cylinder(
        2, 4, circular_segments=512
    )
    # x, y >= 0 and the same quarter turned -30 degrees: the arc from 0 to 60 degrees
    arc = tube ^ m3.Manifold.cube([6, 6, 2]) ^ m3.Manifold.cube([6, 6, 2]).rotate([0, 0, -30])
    volume = arc.volume()
    assert _hull_of(arc)[1] > 1.3 * volume
    hulls = convex_hulls(arc, volume)
    assert len(hulls) == 2**HULL_MAX_DEPTH
    sizes = np.array([ConvexHull(h).volume for h in hulls])
    assert sizes.min() > 0.5 * volume / len(hulls)
    assert volume * (1 - 1e-9) <= sizes.sum() < 1.006 * volume


def test_a_convex_piece_of_a_subdivided_mesh_keeps_one_hull():
    m = trimesh.creation.cylinder(radius=1, height=2, sections=96)
    for _ in range(3):
        m = m.subdivide()  # coplanar clusters of points on every facet
    man = m3.Manifold(
        m3.Mesh(
            vert_properties=np.asarray(m.vertices, np.float32),
            tri_verts=np.asarray(m.faces, np.uint32),
        )
    ) ^ m3.Manifold.cube([1.5, 1.5, 1.5]).translate([-0.3, -0.2, -0.6])
    volume = _hull_of(man)[1]
    assert volume == pytest.approx(man.volume(), rel=1e-6)
    (hull,) = convex_hulls(man, man.volume())
    assert len(hull) <= MAX_HULL_VERTS


def test_simplify_hull_keeps_at_most_max_verts_inside_the_full_hull():
    """2000 points on a unit sphere: 64 of them, all input points (so inside the full hull),
    and no input point farther than 0.1 outside their hull (a regular 64-vertex polyhedron
    misses the sphere by about 0.04); a hull already small enough keeps all its vertices."""
    rng = np.random.default_rng(3)
    pts = rng.normal(size=(2000, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    out = simplify_hull(pts)
    assert len(out) == MAX_HULL_VERTS == 64
    assert (np.abs(out[:, None] - pts[None]).max(axis=2).min(axis=1) == 0).all()
    eq = ConvexHull(out).equations
    assert (pts @ eq[:, :3].T + eq[:, 3]).max(axis=1).max() < 0.1
    assert ConvexHull(out).volume > 0.8 * ConvexHull(pts).volume
    cube = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float)
    inner = np.vstack([cube, rng.random((100, 3))])
    assert ConvexHull(simplify_hull(inner, 8)).volume == pytest.approx(1.0)


def test_a_finely_tessellated_round_tower_gets_small_hulls():
    """A 1024-sided cylinder's pieces: every hull has at most MAX_HULL_VERTS vertices and
    stays within 1 cm of the piece's surface (the mass comes from the full piece)."""
    tower = trimesh.creation.cylinder(radius=3.0, height=4.0, sections=1024)
    scene = fracture_with_seeds(
        [Part("tower_00", "part", "concrete", tower)], [[[-1, 0, 0], [1, 0, 0], [0, 1, 1]]]
    )
    for p in scene.pieces:
        (h,) = p.hulls
        assert 4 <= len(h) <= MAX_HULL_VERTS
        full = p.mesh.vertices[ConvexHull(p.mesh.vertices).vertices]
        eq = ConvexHull(h).equations
        assert (full @ eq[:, :3].T + eq[:, 3]).max(axis=1).max() < 0.01
    assert sum(p.volume for p in scene.pieces) == pytest.approx(tower.volume, rel=1e-6)


def _mesh_of(man):
    mesh = man.to_mesh64()
    return trimesh.Trimesh(
        mesh.vert_properties[:, :3], mesh.tri_verts.astype(np.int64), process=False
    )


def test_mass_properties_of_a_box_piece():
    (p,) = fracture_with_seeds(
        [_box_part((1, 0, 0), (3, 1, 1), material="steel")], [[[2, 0.5, 0.5]]]
    ).pieces
    m = 2.0 * 7850.0
    assert p.mass == pytest.approx(m, rel=1e-12)
    np.testing.assert_allclose(p.com, [2, 0.5, 0.5], atol=1e-12)
    expected = np.diag([m * (1 + 1) / 12, m * (4 + 1) / 12, m * (4 + 1) / 12])
    np.testing.assert_allclose(p.inertia, expected, rtol=1e-9, atol=1e-9)


def test_material_overrides_reach_mass_and_bonds():
    part = _box_part((0, 0, 0), (2, 1, 1))
    over = {"concrete": {"density": 1000.0, "tensile": 5.0}}
    scene = fracture_with_seeds([part], [[[0.5, 0.5, 0.5], [1.5, 0.5, 0.5]]], overrides=over)
    assert scene.pieces[0].mass == pytest.approx(1000.0)
    assert np.all(scene.bonds.tensile == 5.0)
    assert np.all(scene.bonds.shear == PRESETS["concrete"].shear)


def test_piece_count_limits():
    part = [_box_part((0, 0, 0), (1, 1, 1))]
    for bad in (0, MAX_PIECES + 1, 2.5):
        with pytest.raises(UserError, match="fracture.pieces must be an integer 1..100000"):
            fracture_parts(part, bad)


def test_names_follow_the_convention():
    scene = fracture_parts([_box_part((0, 0, 0), (2, 1, 1), name="column_03")], 3, seed=0)
    assert [p.name for p in scene.pieces] == [f"column_03.piece_{n:04d}" for n in range(3)]
    assert all(p.element == "column_03" for p in scene.pieces)


def test_write_read_round_trip_gives_identical_arrays(tmp_path):
    scene = fracture_parts(build_procedural(floors=1, bays_x=1, bays_z=1), 20, seed=5)
    write_fracture(scene, tmp_path / "a")
    back = read_fracture(tmp_path / "a")
    write_fracture(back, tmp_path / "b")
    for name, fmt in (("pieces", "destruct.pieces/1"), ("bonds", "destruct.bonds/1")):
        a = load_npz(tmp_path / "a" / f"{name}.npz", fmt)
        b = load_npz(tmp_path / "b" / f"{name}.npz", fmt)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    pieces, bonds = scene_arrays(scene)
    assert pieces["vertices"].dtype == np.float32 and pieces["faces"].dtype == np.int32
    assert pieces["names"].dtype.kind == "U" and bonds["pairs"].dtype == np.int32
    # local frames: each piece's render vertices average near its centre of mass
    off = pieces["vert_offset"]
    assert off[-1] == len(pieces["vertices"]) and pieces["face_offset"][-1] == len(pieces["faces"])
    info = load_json(tmp_path / "a" / "fracture.json", "destruct.fracture/1")
    assert info["pieces"] == len(scene.pieces) and info["bonds"] == len(scene.bonds)
    assert info["volume_error"] < 1e-6
    assert sum(e["pieces"] for e in info["elements"]) == len(scene.pieces)
    assert back.volume_error == pytest.approx(scene.volume_error)


def _shot(**fracture):
    """A small real shot: one bay, one floor, glass windows, a charge, a material override."""
    from destruct.shot import shot_from_dict

    return shot_from_dict(
        {
            "shot": {"seed": 0},
            "building": {
                "procedural": {"floors": 1, "bays_x": 1, "bays_z": 1, "bay": 4.0, "story": 3.0},
                "material": "concrete",
                "materials": {"window": "glass", "column": "reinforced_concrete"},
            },
            "materials": {"glass": {"tensile": 1e6}},
            "fracture": {"pieces": 30, **fracture},
            "charges": [{"time": 0.5, "position": [0, 1, 0], "radius": 1.0, "impulse": 100.0}],
        }
    )


def test_prepare_reads_the_shot():
    scene = prepare(_shot())
    kinds = {p.kind: p.material for p in scene.pieces}
    assert kinds["window"] == "glass" and kinds["column"] == "reinforced_concrete"
    assert kinds["slab"] == "concrete"
    assert set(scene.material_names) == {"concrete", "reinforced_concrete", "glass"}
    glass = [i for i, p in enumerate(scene.pieces) if p.material == "glass"]
    only_glass = np.isin(scene.bonds.pairs[:, 0], glass) & np.isin(scene.bonds.pairs[:, 1], glass)
    assert np.all(scene.bonds.tensile[only_glass] == 1e6)
    other = prepare(_shot(seed=11))  # fracture.seed overrides shot.seed
    assert not np.array_equal(scene.pieces[0].com, other.pieces[0].com)


def test_run_prepare_writes_the_artifact(tmp_path):
    from destruct.rundir import RunDir
    from destruct.stages import Stage, StageContext

    ctx = StageContext(shot=_shot(), run=RunDir(tmp_path), stage=Stage.PREPARE, frames=[])
    figures = run_prepare(ctx)
    assert figures["pieces"] >= 30 and figures["bonds"] > figures["pieces"]
    assert figures["volume_error"] < 1e-6 and figures["ground_bonds"] > 0
    assert figures["input_volume"] == pytest.approx(figures["pieces_volume"], rel=1e-6)
    for name in ("pieces.npz", "bonds.npz", "fracture.json"):
        assert (tmp_path / "fracture" / name).is_file()
    assert len(read_fracture(tmp_path / "fracture").pieces) == figures["pieces"]


def test_thread_count_does_not_change_the_pieces():
    parts = build_procedural(floors=1, bays_x=1, bays_z=1)
    one = scene_arrays(fracture_parts(parts, 40, seed=9, threads=1))
    two = scene_arrays(fracture_parts(parts, 40, seed=9, threads=2))
    for a, b in zip(one, two):
        for k in a:
            assert np.array_equal(a[k], b[k]), k


@pytest.mark.slow
def test_default_shot_fractures_soundly():
    from destruct import default_shot_path, load_shot

    scene = prepare(load_shot(default_shot_path()))
    assert 780 <= len(scene.pieces) <= 900
    _assert_sound(scene, sample_pairs=200)


def test_sliver_across_an_opening_joins_its_neighbour():
    # a U: seed 0 sits in the left prong by the slot; its cell reaches across the slot and
    # cuts a 0.01 m^3 sliver off the right prong, which joins the right prong's piece
    u = m3.Manifold.cube([3, 1, 1]) - m3.Manifold.cube([1, 0.6, 2]).translate([1, 0.5, -0.5])
    part = Part("u_00", "part", "concrete", _mesh_of(u))
    seeds = np.array([[0.95, 0.9, 0.5], [0.3, 0.3, 0.5], [2.9, 0.2, 0.5]])
    scene = fracture_with_seeds([part], [seeds])
    assert len(scene.pieces) == 3
    assert scene.pieces[2].volume > 1.08 and min(p.volume for p in scene.pieces) > 0.6
    # the joined piece keeps the sliver's own hull; its hulls add up to it exactly
    joined = scene.pieces[2]
    assert len(joined.hulls) >= 2
    hull_volume = sum(ConvexHull(h).volume for h in joined.hulls)
    assert hull_volume == pytest.approx(joined.volume, rel=1e-9)
    _assert_sound(scene, sample_pairs=0)


def test_repeated_or_missing_seeds():
    part = _box_part((0, 0, 0), (2, 1, 1))
    twice = fracture_with_seeds([part], [[[0.5, 0.5, 0.5], [1.5, 0.5, 0.5], [0.5, 0.5, 0.5]]])
    assert [p.volume for p in twice.pieces] == pytest.approx([1.0, 1.0], rel=1e-12)
    (whole,) = fracture_with_seeds([part], [np.zeros((0, 3))]).pieces
    assert whole.volume == pytest.approx(2.0) and not whole.interior.any()

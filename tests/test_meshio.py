"""Mesh import and repair: up axis, scale, recentring, cavities, repair, clear refusals."""

import json

import numpy as np
import pytest
import trimesh

from destruct.building import box_mesh
from destruct.errors import UserError
from destruct.fracture import fracture_parts
from destruct.io import load_json
from destruct.meshio import load_parts, points_inside


def _write_obj(path, *meshes):
    """Meshes as one OBJ (one object per mesh), written by hand so tests control every byte."""
    lines, base = [], 1
    for k, m in enumerate(meshes):
        lines.append(f"o obj{k}")
        lines += [
            f"v {x!r} {y!r} {z!r}" for x, y, z in np.asarray(m.vertices, dtype=float).tolist()
        ]
        lines += [f"f {a + base} {b + base} {c + base}" for a, b, c in np.asarray(m.faces)]
        base += len(m.vertices)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_z_up_mesh_stands_on_the_ground_in_y_up(tmp_path):
    # a 1 x 2 x 5 tower, tall along z, floating 10 m up and off to the side (Z-up file)
    tower = box_mesh((100.0, 200.0, 10.0), (101.0, 202.0, 15.0))
    path = tower.export(tmp_path / "tower.stl") and tmp_path / "tower.stl"
    parts, origin, report = load_parts(path, up="z", scale=1.0)
    (part,) = parts
    lo, hi = part.mesh.bounds
    np.testing.assert_allclose(hi - lo, [1.0, 5.0, 2.0], atol=1e-9)  # tall along +y now
    assert lo[1] == 0.0  # stands on the ground
    np.testing.assert_allclose((lo + hi)[[0, 2]], [0.0, 0.0], atol=1e-9)  # recentred
    # origin is where the file's content went: file (x, y, z) -> (x, z, -y) - origin
    np.testing.assert_allclose(origin, [100.5, 10.0, -201.0], atol=1e-9)
    assert part.kind == "part" and part.material == "concrete"
    assert report["volume"] == pytest.approx(10.0, rel=1e-9)


def test_scale_and_y_up(tmp_path):
    path = _write_obj(tmp_path / "b.obj", box_mesh((0, 0, 0), (100, 300, 200)))  # centimetres
    (part,), origin, _ = load_parts(path, scale=0.01, up="y")
    np.testing.assert_allclose(part.mesh.extents, [1.0, 3.0, 2.0], atol=1e-12)
    assert part.mesh.volume == pytest.approx(6.0, rel=1e-12)
    np.testing.assert_allclose(origin, [0.5, 0.0, 1.0], atol=1e-12)


def test_hollow_box_stays_one_part_and_fractures_exactly(tmp_path):
    outer = box_mesh((-1, 0, -1), (1, 2, 1))
    inner = box_mesh((-0.5, 0.5, -0.5), (0.5, 1.5, 0.5))
    inner.invert()  # a cavity: an inward-facing shell inside the solid
    path = _write_obj(tmp_path / "hollow.obj", trimesh.util.concatenate([outer, inner]))
    parts, _, report = load_parts(path)
    assert len(parts) == 1 and report["flipped"] == []
    assert parts[0].mesh.volume == pytest.approx(7.0, rel=1e-12)
    assert not points_inside(parts[0].mesh, [[0.0, 1.0, 0.0]])[0]
    scene = fracture_parts(parts, 20, seed=4)
    assert scene.volume_error < 1e-6


def test_separate_objects_become_parts_and_overlaps_are_removed(tmp_path):
    a = box_mesh((0, 0, 0), (2, 1, 1))
    b = box_mesh((1, 0, 0), (3, 1, 1))  # overlaps a by 1 m^3
    c = box_mesh((0, 1, 0), (1, 2, 1))  # sits on a, touching only
    path = _write_obj(tmp_path / "three.obj", a, b, c)
    parts, _, report = load_parts(path, material="brick", materials={"obj2": "wood"})
    assert [p.name for p in parts] == ["obj0_00", "obj1_00", "obj2_00"]
    assert [p.material for p in parts] == ["brick", "brick", "wood"]
    assert [round(p.mesh.volume, 9) for p in parts] == [2.0, 1.0, 1.0]
    (ov,) = report["overlaps"]
    assert ov["part"] == "obj1_00" and ov["with"] == "obj0_00"
    assert ov["volume_before"] == pytest.approx(2.0) and ov["volume_after"] == pytest.approx(1.0)
    assert report["volume_read"] == pytest.approx(5.0) and report["volume"] == pytest.approx(4.0)


def test_inside_out_mesh_is_flipped_and_reported(tmp_path):
    m = box_mesh((0, 0, 0), (1, 1, 1))
    m.invert()
    (part,), _, report = load_parts(_write_obj(tmp_path / "inv.obj", m))
    assert part.mesh.volume == pytest.approx(1.0)
    assert len(report["flipped"]) == 1


@pytest.mark.parametrize("offset", [0.0, 10.0, 1000.0])
@pytest.mark.parametrize("holes", ["one side", "two triangles"])
def test_open_mesh_is_repaired_and_reports_its_volume_before_and_after(tmp_path, offset, holes):
    # A unit box with planar holes holds 1 m^3 once each hole is closed flat, before repair as
    # after, wherever it sits. trimesh's volume of the open surface is no such figure: 1 + offset
    # without the x = offset side, 0.5 without one triangle of each x side (what the report gave
    # before the fix); one cap apex shared by both holes would give 5/6.
    box = box_mesh((offset,) * 3, (offset + 1,) * 3)
    x = box.triangles_center[:, 0]
    lo, hi = np.flatnonzero(np.isclose(x, offset))[0], np.flatnonzero(np.isclose(x, offset + 1))[0]
    keep = np.arange(2, 12) if holes == "one side" else np.setdiff1d(np.arange(12), [lo, hi])
    open_box = trimesh.Trimesh(box.vertices, box.faces[keep], process=False)
    assert not open_box.is_watertight and len(open_box.faces) == 10
    (part,), _, report = load_parts(_write_obj(tmp_path / "open.obj", open_box))
    assert part.mesh.is_watertight and part.mesh.is_winding_consistent
    (rep,) = report["repaired"]
    assert rep["part"] == "obj0" and rep["component"] == 0
    assert rep["volume_before"] == pytest.approx(1.0, rel=1e-9)
    assert rep["volume_after"] == pytest.approx(1.0, rel=1e-6)
    assert report["volume"] == pytest.approx(part.mesh.volume) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("objects", [1, 2], ids=["one-object", "own-object"])
def test_zero_volume_component_is_reported_not_lost(tmp_path, capsys, objects):
    from destruct.fracture import run_prepare
    from destruct.rundir import RunDir
    from destruct.shot import shot_from_dict
    from destruct.stages import Stage, StageContext

    box = box_mesh((0, 0, 0), (1, 1, 1))
    flat = trimesh.Trimesh(  # a closed tetrahedron flat in z = 0, beside the box
        [[3, 0, 0], [4, 0, 0], [3, 1, 0], [3.3, 0.3, 0]],
        [[0, 2, 1], [0, 1, 3], [1, 2, 3], [2, 0, 3]],
        process=False,
    )
    meshes = [box, flat] if objects == 2 else [trimesh.util.concatenate([box, flat])]
    path = _write_obj(tmp_path / "deg.obj", *meshes)
    parts, _, report = load_parts(path)
    assert [p.name for p in parts] == ["obj0_00"] and parts[0].mesh.volume == pytest.approx(1.0)
    part = "obj1" if objects == 2 else "obj0"
    assert report["degenerate"] == [{"part": part, "faces": 4, "volume": 0.0}]
    assert report["repaired"] == [] and report["volume"] == pytest.approx(1.0)
    # the stage says so, and fracture.json keeps the entry
    shot = shot_from_dict({"building": {"mesh": "deg.obj"}, "fracture": {"pieces": 2}}, tmp_path)
    ctx = StageContext(shot=shot, run=RunDir(tmp_path / "run"), stage=Stage.PREPARE, frames=[])
    run_prepare(ctx)
    assert "1 zero-volume components left out" in capsys.readouterr().err
    info = load_json(tmp_path / "run" / "fracture" / "fracture.json", "destruct.fracture/1")
    assert info["repair"]["degenerate"] == report["degenerate"]


def _refused(path, words, **kw):
    with pytest.raises(UserError, match=words) as e:
        load_parts(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_bad_files_get_one_clear_line(tmp_path):
    empty = tmp_path / "empty.obj"
    empty.write_bytes(b"")
    _refused(empty, "is empty")
    _refused(tmp_path / "missing.glb", "does not exist")
    junk = tmp_path / "junk.glb"
    junk.write_bytes(b"this is not a glTF binary at all" * 10)
    _refused(junk, "not a readable .glb mesh")
    text = tmp_path / "notes.obj"
    text.write_text("hello, I am a text file\nnot a mesh\n")
    _refused(text, "holds no triangle mesh")
    (tmp_path / "model.fbx").write_bytes(b"x")
    _refused(tmp_path / "model.fbx", "unsupported extension")


def test_nan_vertices_are_refused(tmp_path):
    p = tmp_path / "nan.obj"
    p.write_text(
        "o thing\nv 0 0 0\nv 1 0 0\nv 0 1 0\nv nan 0 1\nf 1 2 3\nf 1 2 4\nf 2 3 4\nf 1 3 4\n"
    )
    _refused(p, "NaN or infinite vertex coordinates")


def test_zero_volume_mesh_is_refused(tmp_path):
    # a closed but flat tetrahedron (all four corners in the plane z = 0)
    flat = trimesh.Trimesh(
        [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0.3, 0.3, 0]],
        [[0, 2, 1], [0, 1, 3], [1, 2, 3], [2, 0, 3]],
        process=False,
    )
    _refused(_write_obj(tmp_path / "flat.obj", flat), "zero volume")


def test_unrepairable_surface_is_refused(tmp_path):
    # a single triangle is not a volume and pymeshfix cannot close it into one
    tri = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]], process=False)
    msg = _refused(_write_obj(tmp_path / "tri.obj", tri), "obj0")
    assert "cannot close" in msg or "zero volume" in msg


def test_bad_arguments(tmp_path):
    path = _write_obj(tmp_path / "b.obj", box_mesh((0, 0, 0), (1, 1, 1)))
    with pytest.raises(UserError, match="building.up must be 'y' or 'z'"):
        load_parts(path, up="x")
    with pytest.raises(UserError, match="building.scale"):
        load_parts(path, scale=0.0)
    # a unit cube in the wrong units: 1 mm or 10 km across is no building
    for scale in (1e-3, 1e4):
        with pytest.raises(UserError, match="m across at building.scale = .*set building.scale"):
            load_parts(path, scale=scale)
    with pytest.raises(UserError, match="splits into more than 1 parts"):
        load_parts(
            _write_obj(
                tmp_path / "two.obj", *[box_mesh((k, 0, 0), (k + 0.5, 1, 1)) for k in range(2)]
            ),
            max_parts=1,
        )


def test_prepare_a_mesh_shot_records_origin_and_repair(tmp_path):
    from destruct import prepare
    from destruct.fracture import read_fracture, write_fracture
    from destruct.shot import shot_from_dict

    tower = box_mesh((10.0, 20.0, 0.0), (12.0, 21.0, 6.0))  # Z-up file, 12 m^3
    tower.export(tmp_path / "tower.ply")
    shot = shot_from_dict(
        {
            "building": {"mesh": "tower.ply", "up": "z", "material": "brick"},
            "fracture": {"pieces": 12},
            "shot": {"seed": 3},
        },
        tmp_path,
    )
    scene = prepare(shot)
    assert len(scene.pieces) >= 12 and scene.volume_error < 1e-6
    assert scene.input_volume == pytest.approx(12.0, rel=1e-9)
    np.testing.assert_allclose(scene.origin, [11.0, 0.0, -20.5], atol=1e-9)
    assert {p.material for p in scene.pieces} == {"brick"} and scene.ground_bonds > 0
    write_fracture(scene, tmp_path / "fracture")
    back = read_fracture(tmp_path / "fracture")
    np.testing.assert_array_equal(back.origin, scene.origin)
    assert back.repair["volume"] == pytest.approx(12.0) and back.repair["file"].endswith(
        "tower.ply"
    )


def test_run_prepare_warns_about_repairs(tmp_path, capsys):
    from destruct.fracture import run_prepare
    from destruct.rundir import RunDir
    from destruct.shot import shot_from_dict
    from destruct.stages import Stage, StageContext

    _write_obj(tmp_path / "two.obj", box_mesh((0, 0, 0), (2, 1, 1)), box_mesh((1, 0, 0), (3, 1, 1)))
    shot = shot_from_dict({"building": {"mesh": "two.obj"}, "fracture": {"pieces": 6}}, tmp_path)
    ctx = StageContext(shot=shot, run=RunDir(tmp_path / "run"), stage=Stage.PREPARE, frames=[])
    figures = run_prepare(ctx)
    assert figures["input_volume"] == pytest.approx(3.0) and figures["volume_error"] < 1e-6
    assert "1 overlaps between parts removed" in capsys.readouterr().err


def _node_scene():
    """A 1 m^3 pillar (node "Pillar"), a 2 x 1 x 1 m cap on it ("Cap.001") and the same cap
    geometry instanced once more on top ("Cap.002")."""
    scene = trimesh.Scene()
    move = trimesh.transformations.translation_matrix
    cube, cap = box_mesh((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5)), box_mesh((0, 0, 0), (2, 1, 1))
    scene.add_geometry(cube, node_name="Pillar", transform=move([0, 0.5, 0]))
    scene.add_geometry(cap, node_name="Cap.001", geom_name="cap", transform=move([0, 1, 0]))
    scene.graph.update(frame_to="Cap.002", matrix=move([0, 2, 0]), geometry="cap")
    return scene


@pytest.mark.parametrize("kind", ["glb", "gltf-bin-files", "gltf-base64"])
def test_scene_nodes_become_parts_with_their_transforms(tmp_path, kind):
    """glb, and text glTF with its buffers in .bin files or embedded as base64."""
    scene = _node_scene()
    if kind == "glb":
        path = tmp_path / "two.glb"
        path.write_bytes(scene.export(file_type="glb"))
    else:
        embed = kind == "gltf-base64"
        files = scene.export(file_type="gltf", embed_buffers=embed)
        for name, data in files.items():
            (tmp_path / name).write_bytes(data)
        buffers = json.loads(files["model.gltf"])["buffers"]
        assert all(b["uri"].startswith("data:") == embed for b in buffers)
        assert len(files) == (1 if embed else 1 + len(buffers))
        path = tmp_path / "model.gltf"
    parts, origin, report = load_parts(path, materials={"Pillar": "steel"})
    by = {p.name: p for p in parts}
    assert sorted(by) == ["Cap_001_00", "Cap_002_00", "Pillar_00"]  # no dots in names
    assert by["Pillar_00"].material == "steel" and by["Cap_001_00"].material == "concrete"
    assert by["Pillar_00"].mesh.volume == pytest.approx(1.0, rel=1e-9)
    assert by["Cap_001_00"].mesh.volume == pytest.approx(2.0, rel=1e-9)
    assert report["volume"] == pytest.approx(5.0, rel=1e-9) and report["repaired"] == []
    # x spans -0.5..2 and z -0.5..1 in the file: recentred on their middles, on the ground
    np.testing.assert_allclose(origin, [0.75, 0.0, 0.25], atol=1e-6)
    np.testing.assert_allclose(by["Pillar_00"].mesh.bounds, [[-1.25, 0, -0.75], [-0.25, 1, 0.25]])
    np.testing.assert_allclose(by["Cap_001_00"].mesh.bounds, [[-0.75, 1, -0.25], [1.25, 2, 0.75]])
    np.testing.assert_allclose(by["Cap_002_00"].mesh.bounds, [[-0.75, 2, -0.25], [1.25, 3, 0.75]])
    if kind == "gltf-bin-files":  # a missing buffer file is one clear line naming it
        (tmp_path / buffers[1]["uri"]).unlink()
        msg = _refused(path, "not a readable .gltf mesh")
        assert buffers[1]["uri"] in msg


@pytest.mark.parametrize(
    "content, words",
    [(b"", "is empty"), (b"v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "NaN or infinite")],
    ids=["empty", "nan"],
)
def test_cli_exits_2_with_one_line(tmp_path, capsys, content, words):
    from destruct.cli import main

    (tmp_path / "bad.obj").write_bytes(content)
    (tmp_path / "shot.toml").write_text('[building]\nmesh = "bad.obj"\n[fracture]\npieces = 5\n')
    shot, out = str(tmp_path / "shot.toml"), str(tmp_path / "o")
    code = main(["run", shot, "--stages", "prepare", "--out", out, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in err


def test_ray_parity_agrees_with_the_winding_number():
    from destruct.meshio import _ray_parity_inside, _winding_inside

    outer = box_mesh((-1, 0, -1), (1, 2, 1))
    inner = box_mesh((-0.5, 0.5, -0.5), (0.5, 1.5, 0.5))
    inner.invert()
    for mesh in (trimesh.util.concatenate([outer, inner]), trimesh.creation.icosphere(3)):
        tri = np.asarray(mesh.triangles)
        pts = np.random.default_rng(0).uniform(-1.2, 2.2, size=(1000, 3))
        expect = _winding_inside(tri, pts)
        assert 0.05 < expect.mean() < 0.95
        np.testing.assert_array_equal(_ray_parity_inside(tri, pts), expect)

"""USD export of a run and USD camera import (issue 8), on a tiny synthetic run."""

from __future__ import annotations

import numpy as np
import pytest

pxr = pytest.importorskip("pxr")
from pxr import Gf, Usd, UsdGeom, UsdShade

from benchmarks.bench_usd import synthetic_run
from destruct.errors import UserError
from destruct.io import load_npz
from destruct.usd import (
    camera_frames,
    export_run,
    prim_names,
    read_usd_camera,
    write_usd_camera,
)

FPS = 24.0
START = 1001
FRAMES = 4
TIME_SCALE = 0.5
CAMERA = {
    "position": [1.5, 1.5, 4.0],
    "look_at": [1.2, 0.5, 0.0],
    "focal_mm": 35.0,
    "resolution": [64, 48],
    "keys": [
        {"frame": START, "position": [1.5, 1.5, 4.0], "look_at": [1.2, 0.5, 0.0]},
        {
            "frame": START + FRAMES - 1,
            "position": [0.5, 2.0, 4.5],
            "look_at": [1.0, 0.3, 0.0],
            "focal_mm": 50.0,
        },
    ],
}


def quat_matrix(q: np.ndarray) -> np.ndarray:
    """(4,) wxyz -> (3, 3) rotation (float64, normalised)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = synthetic_run(
        tmp_path_factory.mktemp("usd") / "run",
        pieces=4,
        frames=FRAMES,
        fps=FPS,
        start_frame=START,
        rubble=5,
        dust=7,
        time_scale=TIME_SCALE,
        camera=CAMERA,
    )
    out = export_run(folder)
    pieces = load_npz(folder / "fracture" / "pieces.npz", "destruct.pieces/1")
    sims = [
        load_npz(folder / "sim" / f"frame.{f:04d}.npz", "destruct.sim/1")
        for f in range(START, START + FRAMES)
    ]
    return folder, out, pieces, sims, Usd.Stage.Open(str(out))


def test_stage_metadata(run):
    folder, out, _, _, stage = run
    assert out == folder.resolve() / "scene.usdc"
    assert out.read_bytes()[:8] == b"PXR-USDC"  # binary crate
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.y
    assert UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    assert stage.GetTimeCodesPerSecond() == FPS and stage.GetFramesPerSecond() == FPS
    assert (stage.GetStartTimeCode(), stage.GetEndTimeCode()) == (START, START + FRAMES - 1)
    assert stage.GetDefaultPrim().GetPath() == "/World"
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


def test_stage_passes_usd_validators(run):
    """Every validator usd-core ships (subset families, material bindings, stage metadata,
    encapsulation, attribute types...) except the usdz packaging ones finds nothing."""
    from pxr import UsdValidation

    validators = [
        v
        for v in UsdValidation.ValidationRegistry().GetOrLoadAllValidators()
        if not any(k in v.GetMetadata().name for k in ("Package", "Usdz"))
    ]
    assert len(validators) > 10
    errors = UsdValidation.ValidationContext(validators).Validate(run[4])
    assert [e.GetMessage() for e in errors] == []


def test_piece_names(run):
    _, _, pieces, _, stage = run
    meshes = [p for p in stage.GetPrimAtPath("/World/Pieces").GetChildren() if p.IsA(UsdGeom.Mesh)]
    names = [str(n) for n in pieces["names"]]
    assert len(meshes) == len(names) == 4
    assert [p.GetAttribute("destruct:name").Get() for p in meshes] == names
    assert [p.GetName() for p in meshes] == [n.replace(".", "__") for n in names]
    assert [p.GetAttribute("destruct:index").Get() for p in meshes] == [0, 1, 2, 3]


def test_prim_names_are_valid_and_unique():
    from pxr import Sdf

    got = prim_names(["column_03.piece_0012", "3d.piece", "a-b.c", "a_b__c", "a-b.c"])
    assert got[0] == "column_03__piece_0012"
    assert all(Sdf.Path.IsValidIdentifier(n) for n in got)
    assert len(set(got)) == len(got)


@pytest.mark.parametrize("k", [0, FRAMES - 1])
def test_piece_world_boxes_match_cache(run, k):
    """World-space points at the first and last frame: the bounding box from the stage equals
    the one from the cache's pose applied to the local vertices, within 1e-4 m."""
    _, _, pieces, sims, stage = run
    t = Usd.TimeCode(START + k)
    vo = pieces["vert_offset"]
    for i, prim in enumerate(stage.GetPrimAtPath("/World/Pieces").GetChildren()):
        local = np.array(UsdGeom.Mesh(prim).GetPointsAttr().Get(t), dtype=np.float64)
        m = np.array(UsdGeom.Xformable(prim).ComputeLocalToWorldTransform(t)).T
        world = local @ m[:3, :3].T + m[:3, 3]
        v = pieces["vertices"][vo[i] : vo[i + 1]].astype(np.float64)
        expected = v @ quat_matrix(sims[k]["rotation"][i]).T + sims[k]["position"][i]
        np.testing.assert_allclose(world.min(axis=0), expected.min(axis=0), atol=1e-4)
        np.testing.assert_allclose(world.max(axis=0), expected.max(axis=0), atol=1e-4)
        # the stage's own bound (local extent through the transform) encloses the points
        box = (
            UsdGeom.BBoxCache(t, [UsdGeom.Tokens.default_])
            .ComputeWorldBound(prim)
            .ComputeAlignedRange()
        )
        assert np.all(np.array(box.GetMin()) <= expected.min(axis=0) + 1e-4)
        assert np.all(np.array(box.GetMax()) >= expected.max(axis=0) - 1e-4)


def test_piece_velocities_are_per_shot_second(run):
    _, _, _, sims, stage = run
    prim = stage.GetPrimAtPath("/World/Pieces").GetChildren()[2]
    for k in (0, FRAMES - 1):
        v = np.array(prim.GetAttribute("destruct:velocity").Get(START + k))
        w = np.array(prim.GetAttribute("destruct:angularVelocity").Get(START + k))
        np.testing.assert_allclose(v, sims[k]["velocity"][2] * TIME_SCALE, rtol=1e-6)
        np.testing.assert_allclose(
            w, np.degrees(sims[k]["angular_velocity"][2]) * TIME_SCALE, rtol=1e-5
        )


def test_interior_subset_and_materials(run):
    from destruct.materials import PRESETS

    _, _, pieces, _, stage = run
    fo = pieces["face_offset"]
    for i, prim in enumerate(stage.GetPrimAtPath("/World/Pieces").GetChildren()):
        mesh = UsdGeom.Mesh(prim)
        subsets = UsdGeom.Subset.GetGeomSubsets(mesh, UsdGeom.Tokens.face, "materialBind")
        assert len(subsets) == 1
        expected = np.flatnonzero(pieces["face_interior"][fo[i] : fo[i + 1]])
        assert list(subsets[0].GetIndicesAttr().Get()) == expected.tolist()
        valid, why = UsdGeom.Subset.ValidateFamily(mesh, UsdGeom.Tokens.face, "materialBind")
        assert valid, why
        material = str(pieces["material_names"][pieces["material"][i]])
        outer = UsdShade.MaterialBindingAPI(prim).ComputeBoundMaterial()[0]
        inner = UsdShade.MaterialBindingAPI(subsets[0].GetPrim()).ComputeBoundMaterial()[0]
        assert outer.GetPath() == f"/World/Looks/{material}"
        assert inner.GetPath() == f"/World/Looks/{material}_interior"
        for mat, rgb in (
            (outer, PRESETS[material].color),
            (inner, PRESETS[material].interior_color),
        ):
            shader = mat.ComputeSurfaceSource()[0]
            assert shader.GetIdAttr().Get() == "UsdPreviewSurface"
            np.testing.assert_allclose(shader.GetInput("diffuseColor").Get(), rgb, atol=1e-6)


def test_rubble_and_dust_per_frame(run):
    _, _, _, sims, stage = run
    inst = UsdGeom.PointInstancer(stage.GetPrimAtPath("/World/Rubble"))
    dust = UsdGeom.Points(stage.GetPrimAtPath("/World/Dust"))
    assert len(inst.GetPrototypesRel().GetTargets()) == 2
    for k, d in enumerate(sims):
        t = START + k
        pos = np.array(inst.GetPositionsAttr().Get(t))
        assert len(pos) == len(d["rubble_id"]) == 5
        np.testing.assert_allclose(pos, d["rubble_position"], atol=1e-6)
        assert list(inst.GetIdsAttr().Get(t)) == d["rubble_id"].tolist()
        assert list(inst.GetProtoIndicesAttr().Get(t)) == d["rubble_material"].tolist()
        np.testing.assert_allclose(
            np.array(inst.GetScalesAttr().Get(t))[:, 0], d["rubble_radius"], rtol=1e-6
        )
        np.testing.assert_allclose(
            np.array(inst.GetVelocitiesAttr().Get(t)), d["rubble_velocity"] * TIME_SCALE, rtol=1e-6
        )
        # synthetic bits spin at 2 rad/s of simulated time = 1 rad/s of shot time (time_scale 0.5);
        # a bit that lives in one frame only has no spin estimate
        spin = np.linalg.norm(np.array(inst.GetAngularVelocitiesAttr().Get(t)), axis=1)
        other = sims[k + 1] if k + 1 < FRAMES else sims[k - 1]
        alive = np.isin(d["rubble_id"], other["rubble_id"])
        np.testing.assert_allclose(spin[alive], np.degrees(1.0), rtol=1e-4)
        assert np.all(spin[~alive] == 0)
        pts = np.array(dust.GetPointsAttr().Get(t))
        assert len(pts) == len(d["dust_position"]) == 7 + 2 * k
        np.testing.assert_allclose(dust.GetWidthsAttr().Get(t), 2 * d["dust_radius"], rtol=1e-6)
        np.testing.assert_allclose(  # motion blur: per shot second, like the rubble's
            dust.GetVelocitiesAttr().Get(t), d["dust_velocity"] * TIME_SCALE, rtol=1e-6
        )
        alpha = UsdGeom.PrimvarsAPI(dust.GetPrim()).GetPrimvar("displayOpacity")
        assert alpha.GetInterpolation() == UsdGeom.Tokens.vertex
        np.testing.assert_allclose(alpha.Get(t), d["dust_alpha"], rtol=1e-6)
        # instance transforms (the instancer's own computation) put each bit at its position
        xf = inst.ComputeInstanceTransformsAtTime(Usd.TimeCode(t), Usd.TimeCode(t))
        np.testing.assert_allclose(
            [np.array(m)[3, :3] for m in xf], d["rubble_position"], atol=1e-5
        )


def test_rubble_orientations_are_the_cache_quaternions(run):
    """The cache stores wxyz; a USD quath is (real, imaginary): GetReal() is w and
    GetImaginary() is (x, y, z). Half floats hold about 3 decimals."""
    _, _, _, sims, stage = run
    inst = UsdGeom.PointInstancer(stage.GetPrimAtPath("/World/Rubble"))
    for k, d in enumerate(sims):
        t = Usd.TimeCode(START + k)
        quats = inst.GetOrientationsAttr().Get(t)
        assert all(isinstance(q, Gf.Quath) for q in quats)
        got = np.array([[q.GetReal(), *q.GetImaginary()] for q in quats], dtype=np.float64)
        want = d["rubble_rotation"] / np.linalg.norm(d["rubble_rotation"], axis=1, keepdims=True)
        want = np.where(want[:, :1] < 0, -want, want)  # q and -q are one rotation; w >= 0 kept
        assert np.abs(want[:, 1:]).max() > 0.1  # real rotations, so a component swap would show
        np.testing.assert_allclose(got, want, atol=1e-3)
        # the instancer's own transforms (row vectors: p' = p M) rotate as the cache says
        xf = inst.ComputeInstanceTransformsAtTime(t, t)
        for m, q, r in zip(xf, d["rubble_rotation"], d["rubble_radius"]):
            np.testing.assert_allclose(np.array(m)[:3, :3] / r, quat_matrix(q).T, atol=2e-3)


TINY_SHOT = {
    "shot": {"name": "u", "frames": 3, "start_frame": 1},
    "building": {
        "procedural": {
            "floors": 1,
            "bays_x": 1,
            "bays_z": 1,
            "bay": 3.0,
            "story": 3.0,
            "windows": False,
        }
    },
    "fracture": {"pieces": 8},
    "sim": {"backend": "cpu", "preroll": 0.0},  # all threads, like the other in-process tests
    "output": {"usd": True},
}


@pytest.mark.slow  # a real prepare and simulate (about 6 s with the kernel compile)
def test_pipeline_writes_usd_after_simulate_when_the_shot_asks(tmp_path):
    """``[output] usd = true``: scene.usdc lands right after simulate, with one Mesh per
    fractured piece and one time code per frame of the shot."""
    from destruct.pipeline import run as run_pipeline
    from destruct.shot import shot_from_dict

    shot = shot_from_dict(TINY_SHOT)
    result = run_pipeline(shot, tmp_path / "run", "prepare,simulate")
    assert result.ran == ["prepare", "simulate"]
    assert "usd_seconds" in result.manifest["stages"]["simulate"]["figures"]
    stage = Usd.Stage.Open(str(tmp_path / "run" / "scene.usdc"))
    names = [
        str(n)
        for n in load_npz(result.run_dir / "fracture" / "pieces.npz", "destruct.pieces/1")["names"]
    ]
    meshes = [p for p in stage.GetPrimAtPath("/World/Pieces").GetChildren() if p.IsA(UsdGeom.Mesh)]
    assert len(meshes) == len(names) == result.manifest["stages"]["prepare"]["figures"]["pieces"]
    assert [p.GetAttribute("destruct:name").Get() for p in meshes] == names
    frames = shot.frame_numbers()
    assert (stage.GetStartTimeCode(), stage.GetEndTimeCode()) == (frames[0], frames[-1]) == (1, 3)
    for prim in meshes:
        samples = prim.GetAttribute("xformOp:translate").GetTimeSamples()
        assert samples == [float(f) for f in frames]


def test_exported_camera(run):
    folder, out, _, _, stage = run
    from destruct.shot import load_shot

    cam = UsdGeom.Camera(stage.GetPrimAtPath("/World/Camera"))
    assert cam.GetFocalLengthAttr().Get(START) == pytest.approx(
        0.35, abs=1e-7
    )  # 35 mm on a metre stage
    assert cam.GetHorizontalApertureAttr().Get(START) == pytest.approx(0.36, abs=1e-7)
    assert cam.GetVerticalApertureAttr().Get(START) == pytest.approx(0.36 * 48 / 64, abs=1e-7)
    assert cam.GetFocalLengthAttr().Get(START + FRAMES - 1) == pytest.approx(0.50, abs=1e-7)
    shot = load_shot(folder / "shot.toml")
    frames = shot.frame_numbers()
    want = camera_frames(shot, frames)
    got = read_usd_camera(out, frames=frames, fps=FPS)
    for f, g in zip(frames, got):
        np.testing.assert_array_equal(g["position"], want[f].position)
        np.testing.assert_array_equal(g["rotation"], want[f].rotation)
        # float32 in USD: within 1e-4 mm (keyed focal lengths interpolate to e.g. 39.99999999999999)
        assert g["focal_mm"] == pytest.approx(want[f].focal_mm, abs=1e-4) and g["sensor_mm"] == 36.0


def random_cameras(n: int, seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        q = rng.normal(size=4)
        out.append(
            {
                "position": rng.uniform(-50, 50, 3),
                "rotation": quat_matrix(q),
                "focal_mm": float(np.round(rng.uniform(18, 85), 3)),
                "sensor_mm": 36.0,
                "vertical_sensor_mm": 24.0,
            }
        )
    return out


def test_camera_round_trip(tmp_path):
    cams = random_cameras(5)
    path = write_usd_camera(tmp_path / "cam.usda", cams, fps=25.0, start_frame=101)
    got = read_usd_camera(path, "/World/Camera", frames=list(range(101, 106)), fps=25.0)
    for c, g in zip(cams, got):
        np.testing.assert_allclose(g["position"], c["position"], atol=1e-12)
        np.testing.assert_allclose(g["rotation"], c["rotation"], atol=1e-12)
        assert (
            g["focal_mm"] == c["focal_mm"]
            and g["sensor_mm"] == 36.0
            and g["vertical_sensor_mm"] == 24.0
        )
    with pytest.raises(UserError, match=r"animated over time codes 101..105.*frames 1001..1002"):
        read_usd_camera(path, frames=[1001, 1002], fps=25.0)  # shot and matchmove frames disagree
    # a file at 48 time codes per second read for a 24 fps shot: frame f is time code 2 f
    path48 = write_usd_camera(tmp_path / "cam48.usdc", cams, fps=48.0, start_frame=202)
    got = read_usd_camera(path48, frames=[101, 102], fps=24.0)
    np.testing.assert_allclose(got[1]["position"], cams[2]["position"], atol=1e-12)


def test_camera_from_z_up_centimetre_stage(tmp_path):
    """A Maya-style matchmove: Z up, centimetres, translate + rotateXYZ ops, focal length in mm."""
    stage = Usd.Stage.CreateNew(str(tmp_path / "mm.usda"))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
    UsdGeom.SetStageMetersPerUnit(stage, 0.01)
    stage.SetTimeCodesPerSecond(24)
    UsdGeom.Xform.Define(stage, "/rig").AddTranslateOp().Set(Gf.Vec3d(100, 0, 0))
    cam = UsdGeom.Camera.Define(stage, "/rig/shotcam")
    cam.AddTranslateOp().Set(Gf.Vec3d(0, -500, 200))
    cam.AddRotateXYZOp().Set(Gf.Vec3f(90, 0, 0))  # looks along +Y (Z-up), image up = +Z
    cam.CreateFocalLengthAttr(50.0)
    cam.CreateHorizontalApertureAttr(36.0)
    cam.CreateVerticalApertureAttr(20.25)
    UsdGeom.Xform.Define(stage, "/rig/notacam")
    stage.Save()
    (g,) = read_usd_camera(tmp_path / "mm.usda", frames=[1], fps=24.0)
    np.testing.assert_allclose(g["position"], [1.0, 2.0, 5.0], atol=1e-9)  # (x, z, -y) in metres
    np.testing.assert_allclose(g["rotation"], np.eye(3), atol=1e-9)  # looking down -z, y up
    assert (g["focal_mm"], g["sensor_mm"], g["vertical_sensor_mm"]) == (50.0, 36.0, 20.25)
    with pytest.raises(UserError, match="not a Camera"):
        read_usd_camera(tmp_path / "mm.usda", "/rig/notacam", frames=[1], fps=24.0)
    with pytest.raises(UserError, match="no such prim.*/rig/shotcam"):
        read_usd_camera(tmp_path / "mm.usda", "/rig/cam2", frames=[1], fps=24.0)
    with pytest.raises(UserError, match="absolute USD prim path"):
        read_usd_camera(tmp_path / "mm.usda", "rig/shotcam", frames=[1], fps=24.0)


def test_camera_errors(tmp_path):
    stage = Usd.Stage.CreateNew(str(tmp_path / "empty.usda"))
    UsdGeom.Xform.Define(stage, "/World")
    stage.Save()
    with pytest.raises(UserError, match="no camera prim"):
        read_usd_camera(tmp_path / "empty.usda", frames=[1], fps=24.0)
    with pytest.raises(UserError, match="does not exist"):
        read_usd_camera(tmp_path / "nope.usd", frames=[1], fps=24.0)
    (tmp_path / "junk.usda").write_text("this is not usd")
    with pytest.raises(UserError, match="not a readable USD file"):
        read_usd_camera(tmp_path / "junk.usda", frames=[1], fps=24.0)


def test_shot_with_usd_camera_uses_it(tmp_path):
    from destruct.shot import shot_from_dict

    cams = random_cameras(3, seed=5)
    write_usd_camera(tmp_path / "matchmove.usdc", cams, fps=24.0, start_frame=1001)
    shot = shot_from_dict(
        {
            "shot": {"frames": 3},
            "camera": {
                "usd": "matchmove.usdc",
                "usd_prim": "/World/Camera",
                "resolution": [64, 48],
            },
        },
        tmp_path,
    )
    got = camera_frames(shot, [1001, 1002, 1003])
    for c, f in zip(cams, (1001, 1002, 1003)):
        np.testing.assert_allclose(got[f].position, c["position"], atol=1e-12)
        np.testing.assert_allclose(got[f].rotation, c["rotation"], atol=1e-12)
        assert (got[f].focal_mm, got[f].width, got[f].height) == (c["focal_mm"], 64, 48)


def test_export_errors(tmp_path, run):
    folder = run[0]
    with pytest.raises(UserError, match="must end in"):
        export_run(folder, tmp_path / "scene.abc")
    with pytest.raises(UserError, match="not a destruct run folder"):
        export_run(tmp_path)
    partial = synthetic_run(tmp_path / "partial", pieces=2, frames=3)
    (partial / "sim" / "frame.1003.npz").unlink()
    with pytest.raises(UserError, match="2 of the shot's 3 frames.*frame.1003"):
        export_run(partial)
    # what the run's shot names is gone (a moved mesh, a deleted model): the caches suffice
    moved = synthetic_run(tmp_path / "moved", pieces=2, frames=3)
    import tomllib

    from destruct.shot import shot_from_dict

    data = tomllib.loads((moved / "shot.toml").read_text())
    data["refine"]["model"] = "/nowhere/model"
    (moved / "shot.toml").write_text(shot_from_dict(data, files=False).to_toml())
    assert export_run(moved).is_file()
    # a cache with its label but an array removed: one line naming the file and the array
    np.savez(moved / "sim" / "frame.1002.npz", format=np.array("destruct.sim/1"))
    with pytest.raises(UserError, match="frame.1002.npz lacks the array"):
        export_run(moved)


def test_depth_pass_same_through_usd(run):
    """The camera exported to USD and imported again renders the same depth pass, pixel for pixel."""
    raster = pytest.importorskip(
        "destruct.render.raster", reason="the render stage (destruct.render) is not built yet"
    )
    from destruct.camera import CameraFrame
    from destruct.shot import load_shot

    folder, out, pieces, sims, _ = run
    shot = load_shot(folder / "shot.toml")
    frames = shot.frame_numbers()
    direct = camera_frames(shot, frames)
    imported = read_usd_camera(out, frames=frames, fps=FPS)
    vo, fo = pieces["vert_offset"], pieces["face_offset"]
    faces = np.concatenate([pieces["faces"][fo[i] : fo[i + 1]] + vo[i] for i in range(len(vo) - 1)])
    body = np.repeat(np.arange(len(vo) - 1), np.diff(vo))
    for k in (0, FRAMES - 1):
        f = frames[k]
        rot = np.stack([quat_matrix(q) for q in sims[k]["rotation"]])
        world = (
            np.einsum("vij,vj->vi", rot[body], pieces["vertices"].astype(np.float64))
            + sims[k]["position"][body]
        )
        d = imported[k]
        cam = CameraFrame(d["position"], d["rotation"], d["focal_mm"], d["sensor_mm"], 64, 48)
        tri_a, depth_a = raster.rasterize(world, faces, direct[f])
        tri_b, depth_b = raster.rasterize(world, faces, cam)
        assert np.isfinite(depth_a).sum() > 300  # the pieces fill part of the view
        np.testing.assert_array_equal(tri_a, tri_b)
        np.testing.assert_array_equal(depth_a, depth_b)


@pytest.mark.slow  # two fresh interpreters (about 4 s of CPU)
def test_cli_export_usd(tmp_path, run):
    from conftest import run_cli

    out = tmp_path / "shot.usda"
    done = run_cli("export", "usd", run[0], "--out", out)
    assert done.returncode == 0, done.stderr
    assert out.read_text().startswith("#usda")
    stage = Usd.Stage.Open(str(out))
    assert len(stage.GetPrimAtPath("/World/Pieces").GetChildren()) == 4
    bad = run_cli("export", "usd", tmp_path)
    assert bad.returncode == 2
    assert "not a destruct run folder" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_usd_switched_on_after_simulate_still_exports(tmp_path):
    """The simulation is up to date, but the shot now asks for USD: the export still runs."""
    from destruct.pipeline import run as run_pipeline
    from destruct.shot import shot_from_dict

    off = {**TINY_SHOT, "output": {**TINY_SHOT.get("output", {}), "usd": False}}
    run_pipeline(shot_from_dict(off), tmp_path / "run", "prepare,simulate")
    assert not (tmp_path / "run" / "scene.usdc").exists()
    result = run_pipeline(shot_from_dict(TINY_SHOT), tmp_path / "run", "prepare,simulate")
    assert result.ran == []
    stage = Usd.Stage.Open(str(tmp_path / "run" / "scene.usdc"))
    assert (stage.GetStartTimeCode(), stage.GetEndTimeCode()) == (1, 3)

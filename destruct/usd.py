"""USD interchange (issue 8): a run as one USD stage, and a matchmoved USD camera in.

:func:`export_run` writes ``RUN_DIR/scene.usdc`` from ``fracture/pieces.npz``, ``sim/frame.*.npz``
and the resolved ``shot.toml``. The stage (upAxis Y, metersPerUnit 1, timeCodesPerSecond =
framesPerSecond = the shot's fps, one time code per frame number)::

    /World                        Xform, the default prim
      Pieces/<name>               Mesh, points in the piece's local frame (centre of mass at 0);
                                  xformOp:translate (double3, centre of mass [m]) and
                                  xformOp:orient (quatf) sampled per frame; destruct:name (the
                                  name in fracture/), destruct:index (id pass value - 1),
                                  destruct:velocity [m/s] and destruct:angularVelocity [deg/s]
        interior                  GeomSubset (family materialBind) of the fracture faces
      Rubble                      PointInstancer: positions, orientations, scales (= radius),
                                  velocities, angularVelocities [deg/s], ids (= rubble_id),
                                  protoIndices (= material) per frame
        Prototypes/<material>     a unit icosahedron per material
      Dust                        Points: points, widths (= 2 radius), primvars:displayOpacity
      Camera                      Camera: xformOp:transform, focalLength and apertures per frame
      Looks/<material>, Looks/<material>_interior     UsdPreviewSurface materials

USD prim names cannot hold '.', so ``column_03.piece_0012`` becomes ``column_03__piece_0012``;
the original name is kept in ``destruct:name``. Velocities are per second of time codes, i.e. per
shot second: the cache's (simulated-second) velocities are multiplied by ``sim.time_scale``.

A rigid piece's points do not move in its local frame, so a per-point ``velocities`` attribute
would be all zeros (and non-zero values would blur twice, on top of the transform); renderers
(Karma, Arnold, RenderMan, Cycles) take a rigid mesh's motion blur from the transform samples.

The bulk (pieces and their per-frame transforms) is authored with the Sdf layer API inside one
``Sdf.ChangeBlock`` (about 5 us per time sample instead of one Usd attribute ``Set`` each);
``benchmarks/bench_usd.py`` measures it. ``pxr`` is imported inside functions so that
``import destruct`` stays light.

Camera import (``[camera] usd`` / ``usd_prim``): :func:`read_usd_camera` evaluates any camera
prim (any xformOps, parents, Z-up stages, centimetre stages) at the shot's frames;
:func:`camera_frames` gives the render its per-frame :class:`~destruct.camera.CameraFrame`, from
the USD file when the shot names one, from position / look_at / keys otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from destruct.errors import UserError
from destruct.io import load_npz, temp_prefix

if TYPE_CHECKING:
    from destruct.camera import CameraFrame
    from destruct.shot import Shot

PIECES_FORMAT = "destruct.pieces/1"
SIM_FORMAT = "destruct.sim/1"
#: Label in the stage's customLayerData (``destruct:format``).
USD_FORMAT = "destruct.usd/1"
USD_SUFFIXES = (".usd", ".usdc", ".usda")
#: Millimetres per "tenth of a scene unit" on a metre stage (USD focal length and apertures).
MM_PER_LENS_UNIT = 100.0
#: Focal length and apertures are float32 in USD; on import they are rounded to this many
#: decimals of a millimetre, which undoes the float32 error (35 mm -> 0.35 -> 35.0 exactly).
MM_DECIMALS = 4
#: Clipping range written on the exported camera [m].
CLIPPING_RANGE = (0.05, 100000.0)
#: Colour of dust (scene-linear), drawn with per-particle opacity.
DUST_COLOR = (0.46, 0.44, 0.41)
ROUGHNESS = 0.9
ROUGHNESS_INTERIOR = 0.95
#: Tolerance on the orthonormality of an imported camera rotation before it is re-orthonormalised.
ORTHO_TOL = 1e-9


# ----------------------------------------------------------------------------- names, maths


def prim_names(names: Iterable[str]) -> list[str]:
    """Valid, unique USD prim names for piece names: '.' -> '__', any other invalid character
    -> '_', a leading digit gets a '_' in front; a name that collides gets ``_<k>`` appended."""
    from pxr import Tf

    out: list[str] = []
    used: set[str] = set()
    for name in names:
        base = str(name).replace(".", "__")
        if base[:1].isdigit():
            base = "_" + base
        base = Tf.MakeValidIdentifier(base)
        cand, k = base, 1
        while cand in used:
            cand, k = f"{base}_{k}", k + 1
        used.add(cand)
        out.append(cand)
    return out


def _unit_quats(q: np.ndarray) -> np.ndarray:
    """(..., 4) wxyz -> unit quaternions with w >= 0 (float64)."""
    q = np.asarray(q, dtype=np.float64)
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    q = np.where(n > 0, q / np.where(n > 0, n, 1.0), np.array([1.0, 0.0, 0.0, 0.0]))
    return np.where(q[..., :1] < 0, -q, q)


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (n, 4) wxyz quaternions."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def rubble_angular_velocities(
    ids: Sequence[np.ndarray], rotations: Sequence[np.ndarray], dt: float
) -> list[np.ndarray]:
    """Per frame, (R, 3) world angular velocity [deg/s] of each rubble bit, by the finite
    difference of its orientation to the next frame (the previous one on the last frame; zero
    for a bit alive in one frame only). ``ids[f]`` (R,) and ``rotations[f]`` (R, 4) wxyz.

    The cache stores no rubble spin, and a PointInstancer whose instances appear and disappear
    needs ``angularVelocities`` to blur the orientations (samples cannot be interpolated).
    """
    out = []
    n = len(ids)
    for f in range(n):
        w = np.zeros((len(ids[f]), 3))
        g, sign = (f + 1, 1.0) if f + 1 < n else (f - 1, -1.0)
        if 0 <= g < n and len(ids[f]) and len(ids[g]):
            common, ia, ib = np.intersect1d(ids[f], ids[g], assume_unique=True, return_indices=True)
            if len(common):
                q0, q1 = _unit_quats(rotations[f][ia]), _unit_quats(rotations[g][ib])
                conj = q0 * np.array([1.0, -1.0, -1.0, -1.0])
                dq = _unit_quats(_quat_mul(q1, conj))  # world-frame rotation from f to g
                v = dq[:, 1:]
                s = np.linalg.norm(v, axis=1)
                angle = 2.0 * np.arctan2(s, dq[:, 0])
                axis = np.where(s[:, None] > 0, v / np.where(s > 0, s, 1.0)[:, None], 0.0)
                w[ia] = sign * np.degrees(axis * angle[:, None]) / dt
        out.append(w)
    return out


# ----------------------------------------------------------------------------- camera


def camera_frames(shot: Shot, frames: Sequence[int]) -> dict[int, CameraFrame]:
    """The shot camera at each frame: the matchmoved USD camera when ``camera.usd`` is set
    (it replaces position / look_at / keys / shake), the keyed and shaken shot camera otherwise.
    Resolution always comes from the shot."""
    from destruct.camera import camera_at, shake_events

    frames = [int(f) for f in frames]
    s, cam = shot.shot, shot.camera
    if cam.usd:
        return dict(zip(frames, usd_camera_frames(cam, frames, s.fps)))
    ts = float(shot.sim.time_scale)
    charges = [
        {"time": c.time / ts, "position": c.position, "impulse": c.impulse} for c in shot.charges
    ]
    events = shake_events(charges, cam.position)
    return {f: camera_at(cam, f, s.start_frame, s.fps, events) for f in frames}


def usd_camera_frames(cam: Any, frames: Sequence[int], fps: float) -> list[CameraFrame]:
    """``[camera]`` with ``usd`` (and optional ``usd_prim``) -> one CameraFrame per frame, at the
    camera's ``resolution``."""
    from destruct.camera import CameraFrame

    width, height = (int(v) for v in cam.resolution)
    return [
        CameraFrame(d["position"], d["rotation"], d["focal_mm"], d["sensor_mm"], width, height)
        for d in read_usd_camera(cam.usd, cam.usd_prim, frames=frames, fps=fps)
    ]


def _open_stage(path: str | os.PathLike) -> Any:
    from pxr import Tf, Usd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"USD file {path} does not exist")
    try:
        stage = Usd.Stage.Open(str(path), Usd.Stage.LoadAll)
    except Tf.ErrorException as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
        raise UserError(f"{path} is not a readable USD file ({first})") from None
    if stage is None:
        raise UserError(f"{path} is not a readable USD file")
    return stage


def _find_camera(stage: Any, path: Path, prim_path: str | None) -> Any:
    from pxr import Sdf, Usd, UsdGeom

    cameras = [p for p in stage.Traverse(Usd.TraverseInstanceProxies()) if p.IsA(UsdGeom.Camera)]
    listing = ", ".join(str(p.GetPath()) for p in cameras[:10]) or "none"
    if prim_path is None:
        if not cameras:
            raise UserError(
                f"{path} holds no camera prim (UsdGeom.Camera); export the matchmove camera into it"
            )
        return cameras[0]
    if not Sdf.Path.IsValidPathString(prim_path) or not prim_path.startswith("/"):
        raise UserError(
            f"camera.usd_prim = {prim_path!r} is not an absolute USD prim path like /World/cam; cameras in {path}: {listing}"
        )
    prim = stage.GetPrimAtPath(prim_path)
    if not prim or not prim.IsValid():
        raise UserError(
            f"camera.usd_prim = {prim_path!r}: no such prim in {path}; cameras there: {listing}"
        )
    if not prim.IsA(UsdGeom.Camera):
        raise UserError(
            f"camera.usd_prim = {prim_path!r} is a {prim.GetTypeName() or 'typeless prim'}, not a Camera; "
            f"cameras in {path}: {listing}"
        )
    return prim


def _up_conversion(stage: Any) -> np.ndarray:
    """(3, 3) rotation taking the stage's world into destruct's Y-up world."""
    from pxr import UsdGeom

    if UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.z:
        return np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    return np.eye(3)


def _rotation_part(m: np.ndarray, where: str) -> np.ndarray:
    """The rotation of a (3, 3) camera -> world matrix that may carry scale (polar decomposition)."""
    if np.abs(m.T @ m - np.eye(3)).max() <= ORTHO_TOL and np.linalg.det(m) > 0:
        return m
    u, s, vt = np.linalg.svd(m)
    if s.min() <= 1e-12 or np.linalg.det(m) < 0:
        raise UserError(
            f"{where}: the camera's transform is degenerate or mirrored (scale {s}); give it a plain rotation"
        )
    return u @ vt


def _check_time_range(
    prim: Any, codes: Sequence[float], frames: Sequence[int], tcps: float, fps: float, where: str
) -> None:
    """Refuse shot frames outside an animated camera's samples: USD would hold the first or last
    pose, and a frozen camera over a moving plate is a silent mistake (usually a start frame
    that differs between the shot and the matchmove)."""
    from pxr import UsdGeom

    samples: list[float] = []
    p = prim
    while p and not p.IsPseudoRoot():
        samples += UsdGeom.Xformable(p).GetTimeSamples() if p.IsA(UsdGeom.Xformable) else []
        p = p.GetParent()
    if not samples or not codes:
        return
    lo, hi = min(samples), max(samples)
    eps = 1e-6 * max(1.0, abs(hi))
    if min(codes) < lo - eps or max(codes) > hi + eps:
        raise UserError(
            f"{where} is animated over time codes {lo:g}..{hi:g} ({tcps:g} per second), but the shot's "
            f"frames {min(frames)}..{max(frames)} at {fps:g} fps read time codes {min(codes):g}.."
            f"{max(codes):g}: set shot.start_frame to match the matchmove, or re-export the camera"
        )


def read_usd_camera(
    path: str | os.PathLike, prim_path: str | None = None, *, frames: Sequence[int], fps: float
) -> list[dict[str, Any]]:
    """Evaluate a USD camera at shot ``frames``.

    The camera is ``prim_path`` or the first Camera prim found. Frame ``f`` is read at time code
    ``f * timeCodesPerSecond / fps`` (time code = frame number when the file runs at the shot's
    fps); frames outside an animated camera's time samples are refused (UserError). Positions are
    converted to metres (metersPerUnit) and to Y up (a Z-up stage is rotated -90 degrees about
    x); focal length and apertures from tenths of a scene unit to millimetres.

    Returns per frame ``{"position": (3,), "rotation": (3, 3) camera -> world (columns x right,
    y up, z towards the viewer), "focal_mm", "sensor_mm" (horizontal aperture),
    "vertical_sensor_mm", "offset_mm": (2,) aperture offsets, "time_code"}``.
    """
    from pxr import Usd, UsdGeom

    path = Path(path)
    if fps <= 0:
        raise UserError(f"fps must be > 0, got {fps}")
    stage = _open_stage(path)
    prim = _find_camera(stage, path, prim_path)
    where = f"{path}:{prim.GetPath()}"
    camera = UsdGeom.Camera(prim)
    mpu = float(UsdGeom.GetStageMetersPerUnit(stage))
    conv = _up_conversion(stage)
    tcps = float(stage.GetTimeCodesPerSecond())
    cache = UsdGeom.XformCache()
    mm = MM_PER_LENS_UNIT * mpu
    codes = [float(f) * tcps / float(fps) for f in frames]
    _check_time_range(prim, codes, frames, tcps, fps, where)
    out = []
    for f, code in zip(frames, codes):
        t = Usd.TimeCode(code)
        if camera.GetProjectionAttr().Get(t) != UsdGeom.Tokens.perspective:
            raise UserError(
                f"{where} is an orthographic camera; destruct renders with a perspective camera"
            )
        cache.SetTime(t)
        m = np.array(cache.GetLocalToWorldTransform(prim), dtype=np.float64).T  # column vectors
        rotation = conv @ _rotation_part(m[:3, :3], where)
        position = conv @ m[:3, 3] * mpu
        focal = round(float(camera.GetFocalLengthAttr().Get(t)) * mm, MM_DECIMALS)
        h_ap = round(float(camera.GetHorizontalApertureAttr().Get(t)) * mm, MM_DECIMALS)
        v_ap = round(float(camera.GetVerticalApertureAttr().Get(t)) * mm, MM_DECIMALS)
        offset = np.array(
            [
                float(camera.GetHorizontalApertureOffsetAttr().Get(t)) * mm,
                float(camera.GetVerticalApertureOffsetAttr().Get(t)) * mm,
            ]
        )
        if not (focal > 0 and h_ap > 0 and v_ap > 0):
            raise UserError(
                f"{where} at frame {f}: focal length {focal} mm and apertures {h_ap} x {v_ap} mm must be > 0"
            )
        out.append(
            {
                "position": position,
                "rotation": rotation,
                "focal_mm": focal,
                "sensor_mm": h_ap,
                "vertical_sensor_mm": v_ap,
                "offset_mm": offset,
                "time_code": t.GetValue(),
            }
        )
    return out


def _camera_samples(frames: Sequence[Any]) -> list[tuple[np.ndarray, float, float, float]]:
    """(4, 4) camera -> world, focal, horizontal and vertical aperture [mm] per camera; each
    camera is a dict of :func:`read_usd_camera` or a CameraFrame."""
    out = []
    for c in frames:
        get = c.get if isinstance(c, dict) else lambda k, _c=c: getattr(_c, k, None)
        pose = np.eye(4)
        pose[:3, :3] = np.asarray(get("rotation"), dtype=np.float64).reshape(3, 3)
        pose[:3, 3] = np.asarray(get("position"), dtype=np.float64).reshape(3)
        sensor = float(get("sensor_mm"))
        vertical = get("vertical_sensor_mm")
        if vertical is None:
            w, h = get("width"), get("height")
            vertical = sensor * h / w if w and h else sensor * 9.0 / 16.0
        out.append((pose, float(get("focal_mm")), sensor, float(vertical)))
    return out


def _define_camera(stage: Any, prim_path: str, times: Sequence[float], cams: Sequence[Any]) -> Any:
    """A perspective Camera at ``prim_path`` with time-sampled transform and lens (metre stage)."""
    from pxr import Gf, UsdGeom

    camera = UsdGeom.Camera.Define(stage, prim_path)
    op = camera.AddTransformOp()
    camera.CreateProjectionAttr(UsdGeom.Tokens.perspective)
    camera.CreateClippingRangeAttr(Gf.Vec2f(*CLIPPING_RANGE))
    focal, h_ap, v_ap = (
        camera.CreateFocalLengthAttr(),
        camera.CreateHorizontalApertureAttr(),
        camera.CreateVerticalApertureAttr(),
    )
    for t, (pose, f_mm, h_mm, v_mm) in zip(times, _camera_samples(cams)):
        op.Set(Gf.Matrix4d(pose.T.tolist()), t)  # USD matrices act on row vectors
        focal.Set(f_mm / MM_PER_LENS_UNIT, t)
        h_ap.Set(h_mm / MM_PER_LENS_UNIT, t)
        v_ap.Set(v_mm / MM_PER_LENS_UNIT, t)
    return camera


def _set_stage_metadata(stage: Any, fps: float, first: int, last: int) -> None:
    from pxr import UsdGeom

    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    stage.SetTimeCodesPerSecond(float(fps))
    stage.SetFramesPerSecond(float(fps))
    stage.SetStartTimeCode(float(first))
    stage.SetEndTimeCode(float(last))


def write_usd_camera(
    path: str | os.PathLike,
    frames: Sequence[Any],
    fps: float,
    start_frame: int,
    *,
    resolution: tuple[int, int] = (1280, 720),
    prim_path: str = "/World/Camera",
) -> Path:
    """Write a camera-only USD file (metre stage, Y up): ``frames[i]`` (a dict as returned by
    :func:`read_usd_camera`, or a CameraFrame) at time code ``start_frame + i``. The vertical
    aperture is ``vertical_sensor_mm`` when given, else the sensor width times height / width of
    the camera (or of ``resolution``)."""
    from pxr import Usd, UsdGeom

    path = Path(path)
    _check_suffix(path)
    frames = list(frames)
    if not frames:
        raise UserError("write_usd_camera: give at least one camera frame")
    w, h = resolution
    cams = [
        c
        if not isinstance(c, dict) or "vertical_sensor_mm" in c
        else {**c, "width": w, "height": h}
        for c in frames
    ]
    stage = Usd.Stage.CreateInMemory()
    _set_stage_metadata(stage, fps, start_frame, start_frame + len(frames) - 1)
    root = prim_path.rsplit("/", 1)[0]
    if root:
        stage.SetDefaultPrim(
            UsdGeom.Xform.Define(stage, "/" + root.strip("/").split("/")[0]).GetPrim()
        )
    _define_camera(stage, prim_path, [float(start_frame + i) for i in range(len(frames))], cams)
    return _export_layer(stage.GetRootLayer(), path)


# ----------------------------------------------------------------------------- export


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in USD_SUFFIXES:
        raise UserError(
            f"USD output {path}: the name must end in {', '.join(USD_SUFFIXES)} (.usdc is binary, .usda text)"
        )


def _export_layer(layer: Any, out: Path) -> Path:
    """Export a layer atomically: a temp file in the same folder (same suffix, so the same file
    format), then a rename; an already loaded layer of that path is reloaded."""
    from pxr import Sdf, Tf

    out = out.resolve()
    tmp = out.parent / f"{temp_prefix(out.stem)}{out.suffix}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if not layer.Export(str(tmp)):
            raise UserError(f"cannot write {out}: USD export failed")
        os.replace(tmp, out)
    except (OSError, Tf.ErrorException) as e:
        why = e.strerror if isinstance(e, OSError) else str(e).strip().splitlines()[-1]
        raise UserError(f"cannot write {out} ({why}); choose a writable --out") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    cached = Sdf.Layer.Find(str(out))
    if cached is not None:
        cached.Reload(force=True)
    return out


def _define_looks(
    stage: Any, material_names: Sequence[str], colors: Sequence[tuple]
) -> list[tuple[str, str]]:
    """UsdPreviewSurface materials; returns (exterior path, interior path) per material."""
    from pxr import Gf, Sdf, UsdGeom, UsdShade

    UsdGeom.Scope.Define(stage, "/World/Looks")
    paths = []
    for name, (color, interior) in zip(material_names, colors):
        pair = []
        for suffix, rgb, rough in (
            ("", color, ROUGHNESS),
            ("_interior", interior, ROUGHNESS_INTERIOR),
        ):
            mat = UsdShade.Material.Define(stage, f"/World/Looks/{name}{suffix}")
            shader = UsdShade.Shader.Define(stage, f"{mat.GetPath()}/PreviewSurface")
            shader.CreateIdAttr("UsdPreviewSurface")
            shader.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).Set(Gf.Vec3f(*rgb))
            shader.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(rough)
            shader.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(0.0)
            mat.CreateSurfaceOutput().ConnectToSource(shader.ConnectableAPI(), "surface")
            pair.append(str(mat.GetPath()))
        paths.append((pair[0], pair[1]))
    return paths


def _sim_frames(run_dir: Path, frames: Sequence[int], n_pieces: int) -> list[dict[str, np.ndarray]]:
    missing = [f for f in frames if not (run_dir / "sim" / f"frame.{f:04d}.npz").is_file()]
    if missing:
        raise UserError(
            f"{run_dir}/sim holds {len(frames) - len(missing)} of the shot's {len(frames)} frames "
            f"(first missing: frame.{missing[0]:04d}.npz): run the simulate stage to the end first"
        )
    out = []
    for f in frames:
        p = run_dir / "sim" / f"frame.{f:04d}.npz"
        d = load_npz(p, SIM_FORMAT)
        if d["position"].shape != (n_pieces, 3) or d["rotation"].shape != (n_pieces, 4):
            raise UserError(
                f"{p} holds {len(d['position'])} pieces, fracture/pieces.npz {n_pieces}: the sim cache is "
                "from another fracture; re-run simulate with --force"
            )
        out.append(d)
    return out


def _author_pieces(
    layer: Any,
    pieces: dict[str, np.ndarray],
    sims: Sequence[dict[str, np.ndarray]],
    times: Sequence[float],
    looks: Sequence[tuple[str, str]],
    time_scale: float,
) -> None:
    """Mesh prims under /World/Pieces with per-frame transforms, through the Sdf API."""
    from pxr import Sdf, Vt

    T = Sdf.ValueTypeNames
    uniform = Sdf.VariabilityUniform
    names = [str(n) for n in pieces["names"]]
    prims = prim_names(names)
    vo, fo = pieces["vert_offset"], pieces["face_offset"]
    verts = np.asarray(pieces["vertices"], dtype=np.float32)
    faces = np.asarray(pieces["faces"], dtype=np.int32)
    interior = np.asarray(pieces["face_interior"], dtype=bool)
    material = np.asarray(pieces["material"], dtype=np.int64)
    pos = np.stack([d["position"] for d in sims]).astype(np.float64)  # (F, P, 3)
    rot = _unit_quats(np.stack([d["rotation"] for d in sims]))[..., [1, 2, 3, 0]].astype(
        np.float32
    )  # xyzw = GfQuatf memory
    vel = (np.stack([d["velocity"] for d in sims]) * time_scale).astype(np.float32)
    ang = np.degrees(np.stack([d["angular_velocity"] for d in sims]) * time_scale).astype(
        np.float32
    )
    mbind = Sdf.TokenListOp.Create(prependedItems=["MaterialBindingAPI"])
    xform_order = Vt.TokenArray(["xformOp:translate", "xformOp:orient"])

    def attr(
        owner: Any,
        name: str,
        type_: Any,
        value: Any = None,
        *,
        var: Any = Sdf.VariabilityVarying,
        custom: bool = False,
    ) -> Any:
        a = Sdf.AttributeSpec(owner, name, type_, var, custom)
        if value is not None:
            a.default = value
        return a

    def bind(owner: Any, target: str) -> None:
        owner.SetInfo("apiSchemas", mbind)
        rel = Sdf.RelationshipSpec(owner, "material:binding", False)
        rel.targetPathList.explicitItems = [Sdf.Path(target)]

    with Sdf.ChangeBlock():
        group = Sdf.CreatePrimInLayer(layer, "/World/Pieces")
        group.specifier = Sdf.SpecifierDef
        group.typeName = "Xform"
        animated = []
        for i, (name, pname) in enumerate(zip(names, prims)):
            v = verts[vo[i] : vo[i + 1]]
            fc = faces[fo[i] : fo[i + 1]]
            prim = Sdf.PrimSpec(group, pname, Sdf.SpecifierDef, "Mesh")
            attr(prim, "points", T.Point3fArray, Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(v)))
            attr(
                prim,
                "faceVertexCounts",
                T.IntArray,
                Vt.IntArray.FromNumpy(np.full(len(fc), 3, dtype=np.int32)),
            )
            attr(
                prim,
                "faceVertexIndices",
                T.IntArray,
                Vt.IntArray.FromNumpy(np.ascontiguousarray(fc.reshape(-1))),
            )
            if len(v):
                attr(
                    prim,
                    "extent",
                    T.Float3Array,
                    Vt.Vec3fArray.FromNumpy(np.stack([v.min(axis=0), v.max(axis=0)])),
                )
            attr(prim, "subdivisionScheme", T.Token, "none", var=uniform)
            attr(prim, "xformOpOrder", T.TokenArray, xform_order, var=uniform)
            attr(prim, "destruct:name", T.String, name, var=uniform, custom=True)
            attr(prim, "destruct:index", T.Int, i, var=uniform, custom=True)
            m = int(material[i])
            bind(prim, looks[m][0])
            inner = np.flatnonzero(interior[fo[i] : fo[i + 1]]).astype(np.int32)
            if len(inner):
                attr(
                    prim,
                    "subsetFamily:materialBind:familyType",
                    T.Token,
                    "nonOverlapping",
                    var=uniform,
                )
                sub = Sdf.PrimSpec(prim, "interior", Sdf.SpecifierDef, "GeomSubset")
                attr(sub, "elementType", T.Token, "face", var=uniform)
                attr(sub, "familyName", T.Token, "materialBind", var=uniform)
                attr(sub, "indices", T.IntArray, Vt.IntArray.FromNumpy(inner))
                bind(sub, looks[m][1])
            animated.append(
                (
                    (
                        attr(prim, "xformOp:translate", T.Double3).path,
                        Vt.Vec3dArray.FromNumpy(np.ascontiguousarray(pos[:, i])),
                    ),
                    (
                        attr(prim, "xformOp:orient", T.Quatf).path,
                        Vt.QuatfArray.FromNumpy(np.ascontiguousarray(rot[:, i])),
                    ),
                    (
                        attr(prim, "destruct:velocity", T.Vector3f, custom=True).path,
                        Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(vel[:, i])),
                    ),
                    (
                        attr(prim, "destruct:angularVelocity", T.Vector3f, custom=True).path,
                        Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(ang[:, i])),
                    ),
                )
            )
        for channels in animated:
            for path, values in channels:
                for k, t in enumerate(times):
                    layer.SetTimeSample(path, t, values[k])


def _icosahedron() -> tuple[np.ndarray, np.ndarray]:
    """Unit-circumradius icosahedron: (12, 3) f32 vertices, (20, 3) int32 outward faces."""
    import trimesh

    m = trimesh.creation.icosahedron()
    return np.asarray(m.vertices, dtype=np.float32), np.asarray(m.faces, dtype=np.int32)


def _extent(points: np.ndarray, radius: np.ndarray) -> Any:
    from pxr import Gf, Vt

    if len(points) == 0:
        return Vt.Vec3fArray([Gf.Vec3f(0.0), Gf.Vec3f(0.0)])
    r = np.asarray(radius, dtype=np.float64)[:, None]
    p = np.asarray(points, dtype=np.float64)
    return Vt.Vec3fArray.FromNumpy(
        np.stack([(p - r).min(axis=0), (p + r).max(axis=0)]).astype(np.float32)
    )


def _author_debris(
    stage: Any,
    sims: Sequence[dict[str, np.ndarray]],
    times: Sequence[float],
    looks: Sequence[tuple[str, str]],
    material_names: Sequence[str],
    fps: float,
    time_scale: float,
) -> None:
    """Rubble as a PointInstancer (one prototype per material), dust as Points."""
    from pxr import Gf, Sdf, UsdGeom, UsdShade, Vt

    def arr(d: dict[str, np.ndarray], key: str, shape: tuple, dtype: Any) -> np.ndarray:
        a = d.get(key)
        return (
            np.zeros((0, *shape), dtype=dtype)
            if a is None
            else np.ascontiguousarray(a, dtype=dtype)
        )

    inst = UsdGeom.PointInstancer.Define(stage, "/World/Rubble")
    UsdGeom.Scope.Define(stage, "/World/Rubble/Prototypes")
    verts, faces = _icosahedron()
    protos = []
    for m, name in enumerate(material_names):
        mesh = UsdGeom.Mesh.Define(stage, f"/World/Rubble/Prototypes/{name}")
        mesh.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(verts))
        mesh.CreateFaceVertexCountsAttr(Vt.IntArray([3] * len(faces)))
        mesh.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(faces.reshape(-1)))
        mesh.CreateExtentAttr(Vt.Vec3fArray([Gf.Vec3f(-1.0), Gf.Vec3f(1.0)]))
        mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
        UsdShade.MaterialBindingAPI.Apply(mesh.GetPrim()).Bind(
            UsdShade.Material.Get(stage, looks[m][1])
        )
        protos.append(mesh.GetPath())
    inst.CreatePrototypesRel().SetTargets(protos)
    ids = [arr(d, "rubble_id", (), np.int64) for d in sims]
    rots = [arr(d, "rubble_rotation", (4,), np.float64) for d in sims]
    spin = rubble_angular_velocities(ids, rots, 1.0 / fps)
    a_pos, a_ori, a_scale = (
        inst.CreatePositionsAttr(),
        inst.CreateOrientationsAttr(),
        inst.CreateScalesAttr(),
    )
    a_vel, a_ang, a_ids = (
        inst.CreateVelocitiesAttr(),
        inst.CreateAngularVelocitiesAttr(),
        inst.CreateIdsAttr(),
    )
    a_proto, a_ext = inst.CreateProtoIndicesAttr(), inst.CreateExtentAttr()

    dust = UsdGeom.Points.Define(stage, "/World/Dust")
    d_pts, d_w, d_ext = dust.CreatePointsAttr(), dust.CreateWidthsAttr(), dust.CreateExtentAttr()
    d_vel = dust.CreateVelocitiesAttr()
    dust.SetWidthsInterpolation(UsdGeom.Tokens.vertex)
    pv = UsdGeom.PrimvarsAPI(dust.GetPrim())
    opacity = pv.CreatePrimvar(
        "displayOpacity", Sdf.ValueTypeNames.FloatArray, UsdGeom.Tokens.vertex
    )
    pv.CreatePrimvar("displayColor", Sdf.ValueTypeNames.Color3fArray, UsdGeom.Tokens.constant).Set(
        Vt.Vec3fArray([Gf.Vec3f(*DUST_COLOR)])
    )
    for d, t, rid, q, w in zip(sims, times, ids, rots, spin):
        p = arr(d, "rubble_position", (3,), np.float32)
        r = arr(d, "rubble_radius", (), np.float32)
        a_pos.Set(Vt.Vec3fArray.FromNumpy(p), t)
        a_ori.Set(Vt.QuathArray.FromNumpy(_unit_quats(q)[:, [1, 2, 3, 0]].astype(np.float16)), t)
        a_scale.Set(
            Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(np.repeat(r[:, None], 3, axis=1))), t
        )
        vel = arr(d, "rubble_velocity", (3,), np.float32) * np.float32(time_scale)
        a_vel.Set(Vt.Vec3fArray.FromNumpy(vel), t)
        a_ang.Set(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(w, dtype=np.float32)), t)
        a_ids.Set(Vt.Int64Array.FromNumpy(rid), t)
        a_proto.Set(Vt.IntArray.FromNumpy(arr(d, "rubble_material", (), np.int32)), t)
        a_ext.Set(_extent(p, r), t)
        dp = arr(d, "dust_position", (3,), np.float32)
        dr = arr(d, "dust_radius", (), np.float32)
        d_pts.Set(Vt.Vec3fArray.FromNumpy(dp), t)
        if "dust_velocity" in d:  # caches before dust_velocity have none: no blur, not zeros
            dv = arr(d, "dust_velocity", (3,), np.float32) * np.float32(time_scale)
            d_vel.Set(Vt.Vec3fArray.FromNumpy(dv), t)
        d_w.Set(Vt.FloatArray.FromNumpy(2.0 * dr), t)
        d_ext.Set(_extent(dp, dr), t)
        opacity.Set(Vt.FloatArray.FromNumpy(arr(d, "dust_alpha", (), np.float32)), t)


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write a run's animated pieces, rubble, dust and camera as USD (``RUN_DIR/scene.usdc`` by
    default; the suffix of ``out`` picks the encoding: .usdc / .usd binary, .usda text).

    Needs ``shot.toml``, ``fracture/pieces.npz`` and every frame of ``sim/``. Returns the path.
    """
    from destruct.shot import load_shot

    run_dir = Path(run_dir)
    if not (run_dir / "shot.toml").is_file():
        raise UserError(
            f"{run_dir} is not a destruct run folder (no shot.toml); give the folder `destruct run` wrote"
        )
    out = run_dir / "scene.usdc" if out is None else Path(out)
    _check_suffix(out)
    shot = load_shot(run_dir / "shot.toml", files=False)  # the model, mesh, plate may be gone
    pieces = load_npz(run_dir / "fracture" / "pieces.npz", PIECES_FORMAT)
    frames = shot.frame_numbers()
    sims = _sim_frames(run_dir, frames, len(pieces["names"]))
    fps, ts = float(shot.shot.fps), float(shot.sim.time_scale)
    times = [float(f) for f in frames]

    # heavy imports only once the inputs are known good, so a wrong folder answers at once
    from pxr import Usd, UsdGeom

    from destruct.render.scene import material_looks

    material_names = [str(n) for n in pieces["material_names"]]

    stage = Usd.Stage.CreateInMemory()
    _set_stage_metadata(stage, fps, frames[0], frames[-1])
    world = UsdGeom.Xform.Define(stage, "/World").GetPrim()
    stage.SetDefaultPrim(world)
    layer = stage.GetRootLayer()
    layer.customLayerData = {
        "destruct:format": USD_FORMAT,
        "destruct:shot": shot.shot.name,
        "destruct:pieces": len(pieces["names"]),
    }
    colors = [
        (m.color, m.interior_color)
        for m in material_looks(pieces["material_names"], shot.materials)
    ]
    looks = _define_looks(stage, material_names, colors)
    cams = camera_frames(shot, frames)
    _define_camera(stage, "/World/Camera", times, [cams[f] for f in frames])
    _author_debris(stage, sims, times, looks, material_names, fps, ts)
    _author_pieces(layer, pieces, sims, times, looks, ts)
    return _export_layer(layer, out)

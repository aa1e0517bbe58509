"""render: every pass written at 1280x720 for 500, 2000 and 8000 pieces, against the naive
one-node-per-piece pyrender path, and the two ways to an exact id pass.

- ``all_passes``: the render stage itself (``destruct.render.run_render``) on a synthetic run:
  merged-mesh GL beauty with shadows, the exact numba raster (depth, normal, id, seg), exact
  motion, back and occlusion, dust, and the EXR + four PNGs written per frame. Frames per second
  over 16 frames after a warm-up frame (numba compile, GL context): a run's first frame has no
  writes to overlap and its last frame's writes have no frame to overlap, about 0.3 s a run at
  2000 pieces (8 % of 8 frames' time); a shot of 100 frames or more hardly feels it.
- ``naive``: the same frame with one pyrender node per piece (nodes share their meshes, the
  best case for it): pose updates, the shaded render with shadows (the stage's shaders, so the
  comparison is about the drawing), a SEG render for the ids and one for the seg classes, and
  the same files written on two threads while the next frames render, as the stage does. It has
  no normals and no motion (it writes zeros there), so the comparison flatters it;
  ``naive_render_only_fps`` leaves out its writes. ``naive_stock_fps`` is the naive path
  with pyrender's own shader (36 shadow-map reads per pixel), as a plain pyrender user gets it.
- ``exr``: the EXR codec. At 2000 pieces a second row times both paths again with ZSTD EXRs
  (``render.exr_compression = "zstd"``, for OpenEXR 3.5+ readers, encoded by OpenEXR; files
  about 30 % smaller than the default ZIP's, which destruct encodes itself: ``exr_zip``).
- ``id_raster`` vs ``id_seg``: the exact id pass alone, by the numba rasteriser and by pyrender
  SEG mode (multisampling off, one node per piece), with the share of pixels where they agree.

Pieces are convex hulls of random points (about 13 triangles each) packed in a block, moved
and turned a little per frame. Frames per second are wall clock, so on a shared machine they
move with its load (``load_average``): compare the columns of one run. ``cpu_s_per_frame``
(``time.process_time``, llvmpipe's threads included) is what a farm node running one frame per
core pays. Where it went at 2000 pieces with OpenEXR's own ZIP encoder, each part alone on one
thread, on a machine of 33-37 GB/s memory bandwidth (``machine`` in the JSON): the EXR 0.26
(ZIP of 26 channels 0.21, of which the five empty Cryptomatte ranks, ten zero channels, take
0.06 and the four float motion channels 0.07), the GL beauty 0.13-0.15 (it was 1.0-1.4 with
pyrender's shader and its 36-read shadow filter), the four PNGs 0.075, the passes 0.035-0.05,
the exact raster 0.025. On one of 18 GB/s every part takes 2-3 times as long (the EXR 0.64, the
GL beauty 0.28, the PNGs 0.16) and the naive path 4-5 times. destruct's ZIP encoder
(``destruct.render.exr_zip``) takes a sixth of OpenEXR's time for the same frame (0.09-0.10 s
against 0.55-0.64 on one day). The stage overlaps the parts on four threads, so on two cores a
frame takes about half their sum.
"""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

W, H = 1280, 720
SIZES = (500, 2000, 8000)
ZSTD_SIZE = 2000  # where the render stage is also timed with ZSTD EXRs (exr_compression)
N_SHAPES = 16


def _shapes(rng: np.random.Generator):
    import trimesh

    out = []
    for _ in range(N_SHAPES):
        m = trimesh.convex.convex_hull(rng.uniform(-0.45, 0.45, (10, 3)))
        m.apply_translation(-m.center_mass)
        out.append(m)
    return out


def _layout(n: int):
    """Piece centres in a block ~2:3:1 (x, y, z) on the ground, 1 m apart."""
    nz = max(1, round((n / 6) ** (1 / 3)))
    nx = 2 * nz
    ny = -(-n // (nx * nz))
    g = np.stack(
        np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij"), -1
    ).reshape(-1, 3)[:n]
    return g * 1.0 + [0.5, 0.5, 0.5], (nx, ny, nz)


def _pieces(n: int, rng: np.random.Generator) -> tuple[dict, list]:
    shapes = _shapes(rng)
    centers, dims = _layout(n)
    kind = np.arange(n) % N_SHAPES
    verts = [np.asarray(shapes[k].vertices, np.float32) for k in kind]
    faces = [np.asarray(shapes[k].faces, np.int32) for k in kind]
    voff = np.r_[0, np.cumsum([len(v) for v in verts])]
    foff = np.r_[0, np.cumsum([len(f) for f in faces])]
    names = np.array([f"block_{i // 100:02d}.piece_{i:04d}" for i in range(n)])
    fint = np.concatenate([np.arange(len(f)) % 3 == 0 for f in faces])
    pieces = {
        "names": names,
        "element": np.array([s.split(".")[0] for s in names]),
        "kind": np.array(["part"] * n),
        "material": (np.arange(n) % 3).astype(np.int32),
        "material_names": np.array(["concrete", "brick", "glass"]),
        "volume": np.ones(n),
        "mass": np.full(n, 2400.0),
        "com": centers.astype(np.float64),
        "inertia": np.tile(np.eye(3), (n, 1, 1)),
        "vert_offset": voff.astype(np.int64),
        "vertices": np.concatenate(verts),
        "face_offset": foff.astype(np.int64),
        "faces": np.concatenate(faces),
        "face_interior": fint,
        "hull_piece": np.arange(n, dtype=np.int32),
        "hull_offset": voff.astype(np.int64),
        "hull_vertices": np.concatenate(verts),
        "origin": np.zeros(3),
    }
    return pieces, [shapes[k] for k in kind], dims


def _frames(centers: np.ndarray, count: int, rng: np.random.Generator):
    """Per frame: positions and wxyz rotations, falling and turning a little each frame."""
    n = len(centers)
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    drift = rng.normal(0, 0.02, (n, 3))
    out = []
    for k in range(count):
        ang = 0.03 * k
        q = np.c_[np.full(n, np.cos(ang / 2)), np.sin(ang / 2) * axis]
        out.append((centers + k * drift, q))
    return out


def _shot(dims, frames: int):
    from destruct.shot import shot_from_dict

    nx, ny, nz = dims
    centre = [nx / 2, ny / 2, nz / 2]
    dist = 1.3 * max(nx, ny * 16 / 9) / (36 / 35)
    return shot_from_dict(
        {
            "shot": {"name": "bench", "frames": frames, "start_frame": 1001},
            "camera": {
                "position": [centre[0] + 0.3 * dist, centre[1] + 0.2 * dist, centre[2] + dist],
                "look_at": centre,
                "resolution": [W, H],
            },
        }
    )


def _naive(
    shot,
    pieces,
    meshes,
    frames,
    repeat: int,
    out_dir: Path,
    setup,
    *,
    stock: bool = False,
    codec: str = "zip",
) -> dict:
    """The naive path per frame: one pyrender node per piece, its pose set each frame; a shaded
    render with shadows (beauty and depth), a SEG render for the ids and one for the seg classes,
    then the same files written as the render stage writes (normal, motion, back and occlusion
    it cannot compute, so they are written as zeros, which also compress fastest). Returns
    seconds per frame with and without the writes, of the id SEG render alone, and frame 0's
    SEG ids."""
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    import pyrender
    from pyrender.shader_program import ShaderProgramCache

    from destruct.camera import look_at_rotation
    from destruct.render import FRAMES_IN_FLIGHT, FrameWriter
    from destruct.render.gl import SHADER_DIR, sun_light
    from destruct.render.passes import u8_to_linear
    from destruct.render.scene import material_looks, quat_to_matrix

    cam = setup.cameras[1001]
    scene = pyrender.Scene(ambient_light=(0.2, 0.2, 0.2))
    scene.add(
        pyrender.IntrinsicsCamera(cam.fx, cam.fy, cam.cx, cam.cy, 0.05, 2000.0), pose=cam.pose()
    )
    pose = np.eye(4)
    pose[:3, :3] = look_at_rotation([0.45, 0.8, 0.4], [0, 0, 0])
    # our shaders read a comparing shadow map (sun_light); pyrender's its own light's
    scene.add(pyrender.DirectionalLight(intensity=3.0) if stock else sun_light(), pose=pose)
    cache: dict[int, object] = {}
    nodes = []
    for m in meshes:
        if id(m) not in cache:
            cache[id(m)] = pyrender.Mesh.from_trimesh(m, smooth=False)
        nodes.append(scene.add(cache[id(m)]))
    ids = np.arange(1, len(nodes) + 1)
    id_map = {nd: np.array([i & 255, (i >> 8) & 255, (i >> 16) & 255]) for nd, i in zip(nodes, ids)}
    cls = np.array([lk.ade20k for lk in material_looks(pieces["material_names"])])[
        pieces["material"]
    ]
    seg_map = {nd: np.array([c, 0, 0]) for nd, c in zip(nodes, cls)}
    r = pyrender.OffscreenRenderer(W, H)
    # the stage's shaders for the shaded render, so the comparison is about the drawing, not
    # the shading (``stock``: pyrender's own, as the naive path would draw); pyrender's for SEG
    seg_shaders = r._renderer._program_cache
    shaded = seg_shaders if stock else ShaderProgramCache(shader_dir=str(SHADER_DIR))
    out: dict = {"render": 0.0, "seg": 0.0}
    zeros2 = np.zeros((H, W, 2), np.float32)
    writer = FrameWriter(
        out_dir,
        "naive",
        list(shot.render.passes),
        setup.near,
        setup.far,
        setup.names,
        len(nodes),
        codec,
    )
    in_flight: list[list] = []  # the write jobs of the frames being written, oldest first
    # the same overlap as the render stage: the files of the last FRAMES_IN_FLIGHT frames are
    # written on two threads while the next renders; the timed span ends when the last frame's
    # files are on disk
    with ThreadPoolExecutor(2) as writers:
        for k in range(repeat + 1):
            if k == 1:
                for j in in_flight.pop():
                    j.result()
                t_start, cpu_start = time.perf_counter(), time.process_time()
            pos, q = frames[k % len(frames)]
            t0 = time.perf_counter()
            rot = quat_to_matrix(q)
            for i, nd in enumerate(nodes):
                p = np.eye(4)
                p[:3, :3] = rot[i]
                p[:3, 3] = pos[i]
                scene.set_pose(nd, p)
            r._renderer._program_cache = shaded
            color, depth = r.render(scene, flags=pyrender.RenderFlags.SHADOWS_DIRECTIONAL)
            r._renderer._program_cache = seg_shaders
            t1 = time.perf_counter()
            idc, _ = r.render(scene, flags=pyrender.RenderFlags.SEG, seg_node_map=id_map)
            t2 = time.perf_counter()
            segc, _ = r.render(scene, flags=pyrender.RenderFlags.SEG, seg_node_map=seg_map)
            t3 = time.perf_counter()
            id_img = (
                idc[..., 0].astype(np.uint32)
                | idc[..., 1].astype(np.uint32) << 8
                | idc[..., 2].astype(np.uint32) << 16
            )
            passes = {
                "beauty": u8_to_linear(color),
                "alpha": (id_img > 0).astype(np.float32),
                "depth": np.where(depth > 0, depth, np.inf).astype(np.float32),
                "id": id_img,
                "seg": np.where(id_img > 0, segc[..., 0], 2).astype(np.int64),
                "normal": np.zeros((H, W, 3), np.float32),
                "motion": zeros2,
                "back": zeros2,
                "occlusion": np.zeros((H, W), np.float32),
            }
            if len(in_flight) == FRAMES_IN_FLIGHT:
                for j in in_flight.pop(0):
                    j.result()
            in_flight.append(
                [
                    writers.submit(writer.exr, 1001 + k, passes),
                    writers.submit(writer.png, 1001 + k, passes),
                ]
            )
            if k == 0:
                out["ids"] = id_img
            else:
                out["render"] += (t3 - t0) / repeat
                out["seg"] += (t2 - t1) / repeat
        for jobs in in_flight:
            for j in jobs:
                j.result()
    out["total"] = (time.perf_counter() - t_start) / repeat
    out["cpu"] = (time.process_time() - cpu_start) / repeat
    r.delete()
    return out


def _ours(shot, run, frames: list[int], codec: str) -> tuple[float, float]:
    """Wall and CPU seconds per frame of the render stage over ``frames`` (rendered afresh)."""
    from destruct.render import run_render
    from destruct.stages import Stage, StageContext

    render = shot.render.model_copy(update={"exr_compression": codec})
    shot = shot.model_copy(update={"render": render})
    t0, c0 = time.perf_counter(), time.process_time()
    run_render(StageContext(shot=shot, run=run, stage=Stage.RENDER, frames=frames, force=True))
    return (time.perf_counter() - t0) / len(frames), (time.process_time() - c0) / len(frames)


def _versus(ours: float, ours_cpu: float, naive: dict, codec: str) -> dict:
    """The fields comparing the render stage (seconds a frame) with the naive path's run."""
    return {
        "exr": codec,
        "fps": round(1.0 / ours, 3),
        "naive_fps": round(1.0 / naive["total"], 3),
        "speedup": round(naive["total"] / ours, 2),
        "naive_render_only_fps": round(1.0 / naive["render"], 3),
        "cpu_s_per_frame": round(ours_cpu, 3),
        "naive_cpu_s_per_frame": round(naive["cpu"], 3),
    }


def run(quick: bool = False, sizes: tuple[int, ...] | None = None) -> list[dict]:
    import OpenEXR

    from destruct.io import save_npz
    from destruct.render import RenderSetup
    from destruct.render.passes import Ground, raster_frame
    from destruct.rundir import RunDir
    from tests._render_synth import sim_frame

    sizes = sizes or (SIZES[:2] if quick else SIZES)
    n_frames = 3 if quick else 17
    records = []
    for n in sizes:
        # the naive path times as many frames as ours, but 3 at 8000 pieces (10 s a frame),
        # where one frame's writes left over are 1 % of its time
        reps = 2 if quick else (n_frames - 1 if n <= ZSTD_SIZE else 3)
        load = round(os.getloadavg()[0], 2)  # other work sharing the cores
        rng = np.random.default_rng(n)
        pieces, meshes, dims = _pieces(n, rng)
        frames = _frames(pieces["com"], n_frames, rng)
        shot = _shot(dims, n_frames)
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp)
            save_npz(run_dir / "fracture" / "pieces.npz", "destruct.pieces/1", **pieces)
            for k, (pos, q) in enumerate(frames):
                save_npz(
                    run_dir / "sim" / f"frame.{1001 + k:04d}.npz",
                    "destruct.sim/1",
                    **sim_frame(1001 + k, pos, q),
                )
            run = RunDir(run_dir)
            _ours(shot, run, [1001], "zip")  # warm-up: numba compile, GL context
            todo = list(range(1002, 1001 + n_frames))
            ours, ours_cpu = _ours(shot, run, todo, "zip")
            setup = RenderSetup(shot, run_dir)
            bodies, _ = setup.load(1001)
            mesh = setup.mesh.pose(bodies)
            t0 = time.perf_counter()
            for _ in range(3):
                ras = raster_frame(
                    mesh, bodies, setup.cameras[1001], Ground()
                )  # ids only: no ground
            t_raster = (time.perf_counter() - t0) / 3
            naive = _naive(shot, pieces, meshes, frames, reps, run_dir / "naive", setup)
            stock = _naive(shot, pieces, meshes, frames, reps, run_dir / "stock", setup, stock=True)
            zstd = None
            if n == ZSTD_SIZE and hasattr(OpenEXR, "ZSTD_COMPRESSION"):
                zstd = (
                    *_ours(shot, run, todo, "zstd"),
                    _naive(
                        shot, pieces, meshes, frames, reps, run_dir / "zstd", setup, codec="zstd"
                    ),
                )
        agree = float(np.mean(naive["ids"] == ras.ids))
        base = {"name": "all_passes_720p", "pieces": n, "triangles": len(mesh.tri_body)}
        records.append(
            {
                **base,
                **_versus(ours, ours_cpu, naive, "zip"),
                "naive_stock_fps": round(1.0 / stock["total"], 3),
                "speedup_vs_stock": round(stock["total"] / ours, 2),
                "id_raster_ms": round(1000 * t_raster, 1),
                "id_seg_ms": round(1000 * naive["seg"], 1),
                "id_seg_vs_raster_agree": round(agree, 5),
                "load_average": load,
            }
        )
        if zstd is not None:
            records.append({**base, **_versus(*zstd, "zstd"), "load_average": load})
    return records


if __name__ == "__main__":
    from benchmarks.runner import main

    main(only="bench_render")

"""The ``render`` stage (DESIGN.md sections 3 and 7): fracture/ + sim/ -> passes/.

Per frame ``f``: ``passes/<shot>.<f:04d>.exr`` (every layer, Cryptomatte) and
``passes/{beauty,depth,normal,seg}/<shot>.<f:04d>.png`` (ControlNet-ready, through
:mod:`refine.conditioning`). Depth, normal, id, seg, motion and occlusion come from the exact
rasteriser (:mod:`destruct.render.raster`); the beauty from pyrender (:mod:`destruct.render.gl`).
Frames already done are skipped; the next frame's raster is reused when frames run in order.
"""

from __future__ import annotations

import io
import os
import re
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from destruct.errors import UserError
from destruct.io import atomic_write_bytes, load_npz, read_image, save_json

__all__ = ["FrameWriter", "RenderSetup", "load_plate", "run_render", "write_frame"]

SIM_FORMAT = "destruct.sim/1"
PIECES_FORMAT = "destruct.pieces/1"
#: The ground square is at least this many metres across each way from the building's centre,
#: and at least this many times the building's size.
GROUND_MIN_HALF = 200.0
GROUND_SCALE = 5.0


def sim_path(run_dir: Path, frame: int) -> Path:
    return Path(run_dir) / "sim" / f"frame.{frame:04d}.npz"


def load_plate(pattern: str, frame: int, width: int, height: int) -> np.ndarray:
    """The background plate of ``frame`` (``####`` = frame number) as scene-linear (h, w, 3)."""
    from destruct.render.passes import srgb_to_linear, u8_to_linear

    path = Path(re.sub(r"#+", lambda m: f"{frame:0{len(m.group())}d}", pattern))
    if not path.is_file():
        raise UserError(
            f"render.plate: {path} (frame {frame}) is missing; every rendered frame needs its plate"
        )
    img = read_image(path, "replace the file or point render.plate at readable images")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    img = img[..., :3]
    if img.shape[:2] != (height, width):
        raise UserError(
            f"render.plate: {path} is {img.shape[1]}x{img.shape[0]}, the camera renders {width}x{height}; "
            "resize the plates or set camera.resolution to match"
        )
    if img.dtype == np.uint8:
        return u8_to_linear(img)
    if img.dtype == np.uint16:
        return srgb_to_linear(img / np.float32(65535.0))
    return img.astype(np.float32)  # float images (EXR) are scene-linear already


class RenderSetup:
    """What every frame of a run shares: meshes, cameras, depth range, ground, body count."""

    def __init__(self, shot: Any, run_dir: Path):
        from destruct.render.passes import Ground
        from destruct.render.scene import PieceMesh, material_looks
        from destruct.usd import camera_frames
        from refine.conditioning import bounds_corners, depth_range

        self.shot = shot
        self.run_dir = Path(run_dir)
        pieces = load_npz(self.run_dir / "fracture" / "pieces.npz", PIECES_FORMAT)
        looks = material_looks(pieces["material_names"], shot.materials)
        self.mesh = PieceMesh(pieces, looks)
        s = shot.shot
        self.frames_all = list(range(s.start_frame, s.start_frame + s.frames))
        # the keyed, shaken shot camera, or the matchmoved USD camera when camera.usd is set
        self.cameras = camera_frames(shot, self.frames_all)
        # bounds of everything that moves, over the whole simulation (every frame and farm chunk agree)
        lo, hi, max_rubble = np.full(3, np.inf), np.full(3, -np.inf), -1
        for f in self.frames_all:
            p = sim_path(self.run_dir, f)
            if not p.is_file():
                raise UserError(f"{p} is missing: run the simulate stage first (--stages simulate)")
            d = load_npz(p, SIM_FORMAT)
            pos = d["position"].astype(np.float64)
            if len(pos) != self.mesh.n_pieces:
                raise UserError(
                    f"{p} holds {len(pos)} pieces, fracture/pieces.npz {self.mesh.n_pieces}: the simulation "
                    "is from another fracture; re-run simulate (--stages simulate --force)"
                )
            if not np.isfinite(pos).all():
                raise UserError(
                    f"{p}: piece positions are not finite (the simulation blew up); re-run simulate"
                )
            lo = np.minimum(lo, (pos - self.mesh.radius[:, None]).min(axis=0))
            hi = np.maximum(hi, (pos + self.mesh.radius[:, None]).max(axis=0))
            if len(d.get("rubble_id", ())):
                rp, rr = d["rubble_position"].astype(np.float64), d["rubble_radius"][:, None]
                lo, hi = (
                    np.minimum(lo, (rp - rr).min(axis=0)),
                    np.maximum(hi, (rp + rr).max(axis=0)),
                )
                max_rubble = max(max_rubble, int(d["rubble_id"].max()))
        self.bounds = (lo, hi)  # the sun's shadow map covers them (GLRenderer)
        self.n_bodies = self.mesh.n_pieces + max_rubble + 1
        try:
            self.near, self.far = depth_range(
                bounds_corners(lo, hi), [c.view_matrix() for c in self.cameras.values()]
            )
        except ValueError:
            centre = ", ".join(f"{v:.1f}" for v in (lo + hi) / 2)
            raise UserError(
                f"camera: everything the simulation moves is behind the camera in every frame; "
                f"point camera.look_at at the building (its centre is at [{centre}])"
            ) from None
        self.ground = Ground()
        if shot.sim.ground:
            size = float(np.max(hi - lo))
            centre = (lo + hi) / 2
            self.ground = Ground(
                max(GROUND_MIN_HALF, GROUND_SCALE * size), (float(centre[0]), float(centre[2]))
            )
        # GL clip range: everything from the near clip to the ground's far corner
        reach = max(
            np.linalg.norm(c.position - np.array([self.ground.center[0], 0, self.ground.center[1]]))
            for c in self.cameras.values()
        )
        self.gl_far = float(max(self.far, reach + 1.5 * self.ground.half_size) * 1.01)
        self.names = self.mesh.names + [f"rubble.{k:06d}" for k in range(max_rubble + 1)]
        from refine.conditioning import ADE20K_DUST, ADE20K_GROUND, ADE20K_SKY

        self.classes = (ADE20K_SKY, ADE20K_GROUND, ADE20K_DUST)

    def load(self, frame: int):
        """(bodies, dust) of a sim frame."""
        from destruct.render.scene import bodies_from_sim

        d = load_npz(sim_path(self.run_dir, frame), SIM_FORMAT)
        dust = None
        if len(d.get("dust_position", ())):
            dust = (d["dust_position"], d["dust_radius"], d["dust_alpha"])
        return bodies_from_sim(d, self.mesh.n_pieces, self.n_bodies), dust


def save_png_fast(path: Path, image: np.ndarray, palette: np.ndarray | None = None) -> None:
    """PNG at zlib level 1 (4x faster than the default, about 10 % larger), atomically.

    With ``palette`` ((n, 3) uint8), ``image`` (h, w) uint8 holds its row indices: a paletted
    PNG, a third of the pixels to compress (6x faster for the seg pass), which every reader
    expands to the palette's RGB."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(image))
    if palette is not None:
        img.putpalette(np.asarray(palette, dtype=np.uint8).tobytes())  # "L" -> "P"
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    atomic_write_bytes(path, buf.getvalue())


@dataclass
class FrameWriter:
    """Writes a frame's files into ``out_dir`` (``passes/``), each atomically: the EXR and the
    PNGs are separate calls so the render stage runs them on two threads."""

    out_dir: Path
    shot_name: str
    passes: list[str]
    near: float
    far: float
    names: list[str]
    n_pieces: int
    compression: str = "zip"

    def exr(self, frame: int, p: dict[str, np.ndarray]) -> None:
        """``<shot>.<frame>.exr``: every layer of ``passes`` and the Cryptomatte."""
        from destruct.render.exr import write_exr

        passes = self.passes
        layers: dict[str, np.ndarray] = {}
        if "beauty" in passes:
            for i, c in enumerate("RGB"):
                layers[c] = p["beauty"][..., i].astype(np.float16)
            layers["A"] = p["alpha"].astype(np.float16)
        if "depth" in passes:
            layers["depth.Z"] = p["depth"].astype(np.float32)
        if "normal" in passes:  # unit vectors: half keeps 3 decimals
            for i, c in enumerate("XYZ"):
                layers[f"N.{c}"] = p["normal"][..., i].astype(np.float16)
        if "motion" in passes:
            for key in ("motion", "back"):
                layers[f"{key}.X"] = p[key][..., 0]
                layers[f"{key}.Y"] = p[key][..., 1]
        if "occlusion" in passes:
            layers["occlusion.Y"] = p["occlusion"].astype(np.float16)  # 0 or 1, exact in half
        crypto = None
        if "id" in passes:
            layers["id"] = p["id"]
            crypto = (p["id"], self.names, self.n_pieces)
        write_exr(
            self.out_dir / f"{self.shot_name}.{frame:04d}.exr",
            layers,
            cryptomatte=crypto,
            attributes={
                "destruct/frame": str(frame),
                "destruct/depth_range": f"{self.near} {self.far}",
            },
            compression=self.compression,
        )

    def png(self, frame: int, p: dict[str, np.ndarray]) -> None:
        """``{beauty,depth,normal,seg}/<shot>.<frame>.png``, ControlNet-ready."""
        for job in self.png_jobs(frame, p):
            job()

    def png_jobs(self, frame: int, p: dict[str, np.ndarray]) -> list[Callable[[], None]]:
        """The PNGs of :meth:`png`, one call each, so a writer pool can run them side by side
        (Pillow compresses without the GIL)."""
        from destruct.render.passes import linear_to_u8
        from refine.conditioning import (
            ADE20K_PALETTE,
            depth_to_control,
            normal_to_control,
            seg_indices,
            to_uint8,
        )

        stem, out, passes = f"{self.shot_name}.{frame:04d}", self.out_dir, self.passes

        def depth() -> None:  # one grey channel: a third of the bytes; loaders expand it to RGB
            grey = to_uint8(depth_to_control(p["depth"], self.near, self.far)[..., 0])
            save_png_fast(out / "depth" / f"{stem}.png", grey)

        def normal() -> None:
            control = normal_to_control(p["normal"], np.isfinite(p["depth"]))
            save_png_fast(out / "normal" / f"{stem}.png", to_uint8(control))

        jobs = {
            "beauty": lambda: save_png_fast(
                out / "beauty" / f"{stem}.png", linear_to_u8(p["beauty"])
            ),
            "depth": depth,
            "normal": normal,
            "seg": lambda: save_png_fast(
                out / "seg" / f"{stem}.png", seg_indices(p["seg"]), ADE20K_PALETTE
            ),
        }
        return [job for name, job in jobs.items() if name in passes]


def write_frame(
    out_dir: Path,
    shot_name: str,
    frame: int,
    p: dict[str, np.ndarray],
    passes: list[str],
    *,
    exr: bool,
    png: bool,
    near: float,
    far: float,
    names: list[str],
    n_pieces: int,
) -> None:
    """The EXR and PNGs of one frame, one after the other (each written atomically)."""
    w = FrameWriter(out_dir, shot_name, passes, near, far, names, n_pieces)
    if exr:
        w.exr(frame, p)
    if png:
        w.png(frame, p)


#: Frames whose files may still be being written while the next frame renders. With OpenEXR's
#: own ZIP encoder a 1280x720 frame's EXR took about as long as the next frame's GL beauty and
#: raster, and a second frame in flight kept both cores busy (2000 pieces on two cores: 4 %
#: faster); with destruct's (:mod:`destruct.render.exr_zip`) one and two are within the noise
#: (2.3-2.9 fps each). It holds one more frame's passes in memory (about 100 MB at 1280x720).
FRAMES_IN_FLIGHT = 2


def run_render(ctx) -> dict[str, Any]:
    """Render every frame of ``ctx.frames_todo()`` into ``passes/``; figures for the manifest.

    Four threads share a frame's work, since each waits outside the GIL most of the time: the
    GL beauty on its own thread (the EGL context lives there), the exact raster and passes
    (numba kernels without the GIL) on the calling thread, and the EXR and the PNGs on writer
    threads while the next frames render (two writers on a small machine; on a many-core GPU
    server the four PNGs are written side by side, as one thread would take 75 ms a frame for
    them). The writes of :data:`FRAMES_IN_FLIGHT` frames may be under way at once. A frame is
    recorded done once its files are on disk.
    """
    import OpenEXR

    from destruct.render.gl import GLRenderer
    from destruct.render.passes import beauty_pass, frame_passes, raster_frame

    shot = ctx.shot
    todo = ctx.frames_todo()
    setup = RenderSetup(shot, ctx.run_dir)
    out_dir = ctx.path("passes", "x").parent
    save_json(
        out_dir / "depth_range.json",
        {"format": "destruct.depthrange/1", "near": setup.near, "far": setup.far},
    )
    figures: dict[str, Any] = {
        "near": round(setup.near, 4),
        "far": round(setup.far, 4),
        "resolution": list(shot.camera.resolution),
        "frames_rendered": 0,
    }
    if not todo:
        return figures
    # the EXR codecs other than ZIP and ZIPS (destruct's own, on the writer thread) compress on
    # OpenEXR's pool, one thread per core (its default, 0, compresses on the writing thread alone)
    OpenEXR.set_global_thread_count(max(OpenEXR.global_thread_count(), os.cpu_count() or 1))
    passes = list(shot.render.passes)
    cam0 = setup.cameras[todo[0]]
    plate = shot.render.plate
    last = setup.frames_all[-1]
    cache: dict[int, Any] = {}
    writer = FrameWriter(
        out_dir,
        shot.shot.name,
        passes,
        setup.near,
        setup.far,
        setup.names,
        setup.mesh.n_pieces,
        shot.render.exr_compression,
    )

    def raster(f: int):
        if f not in cache:
            bodies, dust = setup.load(f)
            mesh = setup.mesh.pose(bodies)
            cache[f] = (raster_frame(mesh, bodies, setup.cameras[f], setup.ground), dust)
        return cache[f]

    def finish(job) -> None:
        f, futures = job
        for fut in futures:
            fut.result()
        ctx.frame_done(f)
        figures["frames_rendered"] += 1

    t0 = time.perf_counter()
    pending: deque = deque()  # (frame, its write jobs), oldest first
    gl = None
    # the EXR on one writer, the four PNGs side by side on the others where there are cores
    # for them (a GPU server); on a small machine one writer takes the PNGs in turn
    n_writers = 1 + min(4, max(1, (os.cpu_count() or 1) // 4))
    with ThreadPoolExecutor(1) as gl_thread, ThreadPoolExecutor(n_writers) as writers:
        try:
            if "beauty" in passes:
                gl = gl_thread.submit(
                    GLRenderer,
                    cam0.width,
                    cam0.height,
                    ground_half_size=setup.ground.half_size,
                    ground_center=setup.ground.center,
                    shadow_bounds=setup.bounds,
                ).result()
            with ctx.progress(len(todo), "render") as bar:
                for f in todo:
                    r, dust = raster(f)
                    bg = load_plate(plate, f, cam0.width, cam0.height) if plate else None
                    rgba = None
                    if gl is not None:
                        rgba = gl_thread.submit(
                            gl.render, r.mesh, r.cam, 0.05, setup.gl_far, plate=bg is not None
                        )
                    nxt = raster(f + 1)[0] if f < last else None
                    prev = None
                    if f > setup.frames_all[0]:
                        prev = (
                            setup.cameras[f - 1],
                            cache[f - 1][0].bodies if f - 1 in cache else setup.load(f - 1)[0],
                        )
                    p = frame_passes(r, nxt=nxt, prev=prev, dust=dust, classes=setup.classes)
                    if rgba is not None:
                        p["beauty"] = beauty_pass(rgba.result(), p["dust"], bg)
                    if len(pending) == FRAMES_IN_FLIGHT:
                        finish(pending.popleft())
                        bar.advance()
                    jobs = []
                    if shot.render.exr:
                        jobs.append(writers.submit(writer.exr, f, p))
                    if shot.render.png:
                        jobs += [writers.submit(job) for job in writer.png_jobs(f, p)]
                    pending.append((f, jobs))
                    for k in [k for k in cache if k < f]:
                        del cache[k]
                while pending:
                    finish(pending.popleft())
                    bar.advance()
        finally:
            if gl is not None:
                gl_thread.submit(gl.close).result()
    figures["seconds_per_frame"] = round(
        (time.perf_counter() - t0) / max(figures["frames_rendered"], 1), 3
    )
    return figures

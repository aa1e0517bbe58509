"""All passes of one frame from the exact raster, the GL beauty and the neighbouring frames.

:func:`raster_frame` gives the exact buffers (triangle, depth, id) of a posed frame;
:func:`frame_passes` turns them into the EXR layers and the ControlNet inputs. Motion needs the
next frame's raster (for occlusion) and back the previous frame's transforms only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from destruct.render.raster import (
    GROUND,
    SKY,
    add_ground,
    dust_alpha,
    lookup_passes,
    motion_vectors,
    rasterize,
)
from destruct.render.scene import Bodies, FrameMesh

#: Closest depth [m] the rasteriser draws.
NEAR_CLIP = 0.05
DUST_COLOR = np.array([0.46, 0.43, 0.39], dtype=np.float32)  # scene-linear, lit concrete dust


@dataclass
class Ground:
    """The ground square y = 0: half size [m] and centre (x, z); half_size 0 = no ground."""

    half_size: float = 0.0
    center: tuple[float, float] = (0.0, 0.0)


@dataclass
class Raster:
    """Exact buffers of one frame: triangle (h, w) int32 (SKY / GROUND below 0), depth (h, w)
    f32 [m, inf = sky], id (h, w) uint32 (body + 1, 0 = sky and ground)."""

    mesh: FrameMesh
    cam: object
    bodies: Bodies
    tri: np.ndarray
    depth: np.ndarray
    ids: np.ndarray


def raster_frame(mesh: FrameMesh, bodies: Bodies, cam, ground: Ground) -> Raster:
    tri, depth = rasterize(mesh.verts, mesh.faces, cam, near=NEAR_CLIP)
    if ground.half_size > 0:
        add_ground(tri, depth, cam, ground.half_size, ground.center)
    lut = np.concatenate([[0, 0], mesh.tri_body + 1]).astype(np.uint32)  # GROUND, SKY, triangles
    ids = lut[tri + 2]
    return Raster(mesh, cam, bodies, tri, depth, ids)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded 0..1 -> scene-linear (IEC 61966-2-1)."""
    c = np.asarray(c, dtype=np.float32)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Scene-linear -> sRGB-encoded 0..1 (clipped)."""
    c = np.clip(np.asarray(c, dtype=np.float32), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055).astype(np.float32)


_U8_TO_LINEAR = srgb_to_linear(np.arange(256) / 255.0)
_LINEAR16_TO_U8 = np.floor(linear_to_srgb(np.arange(65536) / 65535.0) * 255.0 + 0.5).astype(
    np.uint8
)


def u8_to_linear(img: np.ndarray) -> np.ndarray:
    """uint8 sRGB -> float32 scene-linear, by table."""
    return _U8_TO_LINEAR[img]


def linear_to_u8(img: np.ndarray) -> np.ndarray:
    """Scene-linear -> uint8 sRGB through a 16-bit table (within one code of the exact
    transfer: the table's step is 1/65535 in linear)."""
    q = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0) * np.float32(65535.0)
    return _LINEAR16_TO_U8[(q + np.float32(0.5)).astype(np.uint16)]


def frame_passes(
    r: Raster,
    *,
    nxt: Raster | None = None,
    prev: tuple[object, Bodies] | None = None,
    gl_rgba: np.ndarray | None = None,
    plate: np.ndarray | None = None,
    dust: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    classes: tuple[int, int, int] = (2, 13, 46),
) -> dict[str, np.ndarray]:
    """Every pass of one frame as float32 / uint32 arrays.

    Keys: beauty (h, w, 3) scene-linear, alpha (h, w), depth (h, w), normal (h, w, 3) camera
    space (0 for the sky), motion and back (h, w, 2) pixels, occlusion (h, w), id (h, w)
    uint32, seg (h, w) ADE20K class, dust (h, w) coverage. ``gl_rgba`` is the GL render
    (uint8, display-referred); ``plate`` a scene-linear (h, w, 3) background that replaces the
    sky and ground; ``dust`` is (positions, radii, alphas); ``classes`` the ADE20K classes of
    sky, ground and dust.
    """
    cam, mesh, tri = r.cam, r.mesh, r.tri
    h, w = tri.shape
    out: dict[str, np.ndarray] = {"depth": r.depth, "id": r.ids}

    def flow(other_cam, other_bodies: Bodies, **kw):
        return motion_vectors(
            tri,
            r.depth,
            r.ids,
            mesh.tri_body,
            cam,
            r.bodies.as_tuple(),
            other_cam,
            other_bodies.as_tuple(),
            **kw,
        )

    if nxt is not None:
        out["motion"], out["occlusion"] = flow(nxt.cam, nxt.bodies, ids1=nxt.ids, depth1=nxt.depth)
    else:  # last frame: nothing moves, nothing leaves the screen
        out["motion"] = np.zeros((h, w, 2), dtype=np.float32)
        out["occlusion"] = np.zeros((h, w), dtype=np.float32)
    if prev is not None:
        out["back"] = flow(*prev)[0]
    else:
        out["back"] = np.zeros((h, w, 2), dtype=np.float32)
    if dust is not None and len(dust[0]):
        out["dust"] = dust_alpha(dust[0], dust[1], dust[2], cam, r.depth)
    else:
        out["dust"] = np.zeros((h, w), dtype=np.float32)
    sky, ground, dust_class = classes
    # normals: the flat face normal in camera space (R^T n == n @ R); 0 for the sky
    normal_lut = np.concatenate(
        [[cam.rotation.T @ np.array([0.0, 1.0, 0.0]), np.zeros(3)], mesh.normals @ cam.rotation]
    )
    class_lut = np.concatenate([[ground, sky], mesh.tri_class])
    out["normal"], out["seg"], out["alpha"] = lookup_passes(
        tri, normal_lut, class_lut, out["dust"], dust_class
    )
    if gl_rgba is not None:
        out["beauty"] = beauty_pass(gl_rgba, out["dust"], plate)
    return out


def beauty_pass(
    gl_rgba: np.ndarray, dust: np.ndarray, plate: np.ndarray | None = None
) -> np.ndarray:
    """Scene-linear (h, w, 3) beauty: the GL render (uint8 display-referred RGBA) over the
    ``plate`` when given (GL drew over black with coverage alpha: premultiplied), under the
    ``dust`` coverage (h, w). Separate from :func:`frame_passes` so the render stage can draw
    the GL image on its own thread while the exact passes are computed."""
    lin = u8_to_linear(gl_rgba[..., :3])
    if plate is not None:
        cov = gl_rgba[..., 3:4] / np.float32(255.0)
        lin = lin + np.asarray(plate, dtype=np.float32) * (1.0 - cov)
    if not dust.any():  # no dust in view: the blend would return lin unchanged
        return lin.astype(np.float32, copy=False)
    a = dust[..., None]
    return (lin * (1.0 - a) + DUST_COLOR * a).astype(np.float32)


__all__ = [
    "GROUND",
    "SKY",
    "Ground",
    "Raster",
    "beauty_pass",
    "frame_passes",
    "linear_to_srgb",
    "linear_to_u8",
    "raster_frame",
    "srgb_to_linear",
    "u8_to_linear",
]

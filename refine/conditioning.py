"""Render passes -> ControlNet control images (pure numpy, DESIGN.md section 3).

The render stage calls these to write ``passes/<pass>/*.png`` and the refine stage calls them
on the EXR layers to feed the pipeline float tensors (no 8-bit round trip). Every image is
``(h, w, 3) float32`` in 0..1; :func:`to_uint8` makes the PNG.

Conventions, with their sources:

- depth: normalised disparity ``(1/z - 1/far) / (1/near - 1/far)``, near = white, background
  (and anything beyond ``far``) black, as the MiDaS-style depth maps ControlNet's depth models
  were trained on. ``near`` and ``far`` come from :func:`depth_range` over the whole simulation,
  so every frame and every farm chunk map the same depth to the same grey.
- normal: the NormalBAE convention of ``control_v11p_sd15_normalbae``. Its annotator
  (lllyasviel/ControlNet-v1-1-nightly, ``annotator/normalbae/__init__.py``) writes
  ``(n + 1) / 2 * 255`` of the normal predicted by Bae et al.'s ScanNet model
  (baegwangbin/surface_normal_uncertainty), whose axes are red = left, green = up, blue =
  towards the viewer. In OpenGL camera space (x right, y up, z towards the viewer) that is
  ``rgb = ((-x + 1) / 2, (y + 1) / 2, (z + 1) / 2)``: a surface facing the camera is
  (128, 128, 255), one facing the image's left is reddish, one facing up is greenish. The same
  signs follow from ControlNet 1.0's normal-from-MiDaS annotator (``annotator/midas``: Sobel x
  and y of the disparity, where image y points down, stacked as r, g), and
  tests/test_conditioning.py checks them on a rotated cube.
- seg: the ADE20K (SceneParse150) palette of mmsegmentation's ``ADE20KDataset.PALETTE``, which
  the UniFormer annotator of ``control_v11p_sd15_seg`` draws; class indices are 0-based
  (0 wall, 1 building, 2 sky, ...). Nearest-neighbour only: no blended colours.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: 0-based SceneParse150 classes the render stage uses besides the materials' own.
ADE20K_SKY = 2
ADE20K_GROUND = 13  # "earth, ground"
ADE20K_DUST = 46  # "sand": the nearest class to a cloud of concrete dust

#: (150, 3) uint8: the ADE20K palette (mmsegmentation ADE20KDataset.PALETTE), row = class index.
# fmt: off
ADE20K_PALETTE = np.array([
    [120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3],  # 0
    [120, 120, 80], [140, 140, 140], [204, 5, 255], [230, 230, 230], [4, 250, 7],
    [224, 5, 255], [235, 255, 7], [150, 5, 61], [120, 120, 70], [8, 255, 51],  # 10
    [255, 6, 82], [143, 255, 140], [204, 255, 4], [255, 51, 7], [204, 70, 3],
    [0, 102, 200], [61, 230, 250], [255, 6, 51], [11, 102, 255], [255, 7, 71],  # 20
    [255, 9, 224], [9, 7, 230], [220, 220, 220], [255, 9, 92], [112, 9, 255],
    [8, 255, 214], [7, 255, 224], [255, 184, 6], [10, 255, 71], [255, 41, 10],  # 30
    [7, 255, 255], [224, 255, 8], [102, 8, 255], [255, 61, 6], [255, 194, 7],
    [255, 122, 8], [0, 255, 20], [255, 8, 41], [255, 5, 153], [6, 51, 255],  # 40
    [235, 12, 255], [160, 150, 20], [0, 163, 255], [140, 140, 140], [250, 10, 15],
    [20, 255, 0], [31, 255, 0], [255, 31, 0], [255, 224, 0], [153, 255, 0],  # 50
    [0, 0, 255], [255, 71, 0], [0, 235, 255], [0, 173, 255], [31, 0, 255],
    [11, 200, 200], [255, 82, 0], [0, 255, 245], [0, 61, 255], [0, 255, 112],  # 60
    [0, 255, 133], [255, 0, 0], [255, 163, 0], [255, 102, 0], [194, 255, 0],
    [0, 143, 255], [51, 255, 0], [0, 82, 255], [0, 255, 41], [0, 255, 173],  # 70
    [10, 0, 255], [173, 255, 0], [0, 255, 153], [255, 92, 0], [255, 0, 255],
    [255, 0, 245], [255, 0, 102], [255, 173, 0], [255, 0, 20], [255, 184, 184],  # 80
    [0, 31, 255], [0, 255, 61], [0, 71, 255], [255, 0, 204], [0, 255, 194],
    [0, 255, 82], [0, 10, 255], [0, 112, 255], [51, 0, 255], [0, 194, 255],  # 90
    [0, 122, 255], [0, 255, 163], [255, 153, 0], [0, 255, 10], [255, 112, 0],
    [143, 255, 0], [82, 0, 255], [163, 255, 0], [255, 235, 0], [8, 184, 170],  # 100
    [133, 0, 255], [0, 255, 92], [184, 0, 255], [255, 0, 31], [0, 184, 255],
    [0, 214, 255], [255, 0, 112], [92, 255, 0], [0, 224, 255], [112, 224, 255],  # 110
    [70, 184, 160], [163, 0, 255], [153, 0, 255], [71, 255, 0], [255, 0, 163],
    [255, 204, 0], [255, 0, 143], [0, 255, 235], [133, 255, 0], [255, 0, 235],  # 120
    [245, 0, 255], [255, 0, 122], [255, 245, 0], [10, 190, 212], [214, 255, 0],
    [0, 204, 255], [20, 0, 255], [255, 255, 0], [0, 153, 255], [0, 41, 255],  # 130
    [0, 255, 204], [41, 0, 255], [41, 255, 0], [173, 0, 255], [0, 245, 255],
    [71, 0, 255], [122, 0, 255], [0, 255, 184], [0, 92, 255], [184, 255, 0],  # 140
    [0, 133, 255], [255, 214, 0], [25, 194, 194], [102, 255, 0], [92, 0, 255],
], dtype=np.uint8)
# fmt: on


def to_uint8(img: np.ndarray) -> np.ndarray:
    """0..1 float image -> uint8 (rounded half up, clipped), for PNGs."""
    return np.floor(np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(
        np.uint8
    )


def depth_to_control(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """(h, w) depth [m along the view axis, inf = background] -> (h, w, 3) float32 disparity.

    1 (white) at ``near``, 0 (black) at ``far``, beyond it and for the background.
    """
    if not (0.0 < near < far):
        raise ValueError(f"depth range must satisfy 0 < near < far, got near={near}, far={far}")
    z = np.asarray(depth, dtype=np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(z > 0, 1.0 / z, 0.0).astype(np.float32)
    d = (inv - np.float32(1.0 / far)) / np.float32(1.0 / near - 1.0 / far)
    d = np.clip(d, 0.0, 1.0, out=d)
    return np.repeat(d[..., None], 3, axis=-1)


def normal_to_control(normal: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(h, w, 3) camera-space unit normals -> (h, w, 3) float32 NormalBAE image.

    ``rgb = ((-x + 1) / 2, (y + 1) / 2, (z + 1) / 2)`` (see the module docstring for the
    source). Pixels outside ``mask`` (the sky) read as a surface facing the camera.
    """
    n = np.asarray(normal, dtype=np.float32)
    out = np.empty(n.shape, dtype=np.float32)
    out[..., 0] = (1.0 - n[..., 0]) * 0.5
    out[..., 1] = (1.0 + n[..., 1]) * 0.5
    out[..., 2] = (1.0 + n[..., 2]) * 0.5
    if mask is not None:
        out[~np.asarray(mask, dtype=bool)] = (0.5, 0.5, 1.0)
    return np.clip(out, 0.0, 1.0, out=out)


def seg_indices(classes: np.ndarray) -> np.ndarray:
    """(h, w) int ADE20K class indices (0-based) -> uint8 rows of :data:`ADE20K_PALETTE`, checked:
    the pixels of a paletted seg PNG."""
    c = np.asarray(classes)
    if c.size and (c.min() < 0 or c.max() >= len(ADE20K_PALETTE)):
        raise ValueError(f"ADE20K class indices must be 0..149, got {c.min()}..{c.max()}")
    return c.astype(np.uint8)


def seg_to_control(classes: np.ndarray) -> np.ndarray:
    """(h, w) int ADE20K class indices (0-based) -> (h, w, 3) float32 palette colours."""
    return ADE20K_PALETTE[seg_indices(classes)].astype(np.float32) / np.float32(255.0)


def depth_range(
    points: np.ndarray, views: Iterable[np.ndarray], *, min_near: float = 0.05
) -> tuple[float, float]:
    """Near and far [m] that bracket ``points`` as seen by every camera in ``views``.

    ``points`` is (n, 3) world points (e.g. the 8 corners of the simulation's bounding box over
    every frame); ``views`` are (4, 4) world -> camera matrices (one per frame). Near is the
    smallest positive depth (at least ``min_near``), far the largest. Computed before any
    frame renders, so every frame and farm chunk share one depth mapping.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    near, far = np.inf, 0.0
    for v in views:
        v = np.asarray(v, dtype=np.float64)
        depth = -(pts @ v[2, :3] + v[2, 3])
        far = max(far, float(depth.max()))
        front = depth[depth > 0]
        near = min(near, float(front.min()) if front.size else np.inf)
    if not np.isfinite(near) or far <= 0.0:
        raise ValueError(
            "the scene is entirely behind every camera: check camera position and look_at"
        )
    near = max(near, min_near)
    return near, max(far, near * 1.001)


def bounds_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(8, 3) corners of the axis-aligned box ``lo``..``hi``."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    idx = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)])
    return np.where(idx == 1, hi, lo)

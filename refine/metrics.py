"""Warping error with the exact flow and occlusion of the render (DESIGN.md section 8).

For frames t and t+1 with the render's forward motion ``motion_t`` (pixels from a point in
frame t to the same point in frame t+1) and ``occlusion_t`` (1 where that point is hidden or
off-screen in t+1): warp frame t+1 back onto frame t, ``W(p) = I_{t+1}(p + motion_t(p))``
(bilinear), and take the mean squared difference ``|I_t(p) - W(p)|^2`` over the pixels that
are visible in both. The error of a sequence is the mean over its consecutive pairs. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sample_bilinear(
    image: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``image`` (h, w) or (h, w, c) at continuous pixel positions ``x, y`` (pixel centres
    at integer + 0.5, the convention of the motion vectors). Returns the samples and a bool
    mask of positions inside the image (outside ones are clamped to the border)."""
    image = np.asanyarray(image)
    h, w = image.shape[:2]
    fx, fy = x - 0.5, y - 0.5
    inside = (fx >= -0.5) & (fx <= w - 0.5) & (fy >= -0.5) & (fy <= h - 0.5)
    fx = np.clip(fx, 0.0, w - 1.0)
    fy = np.clip(fy, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(fx).astype(np.int64), w - 2 if w > 1 else 0)
    y0 = np.minimum(np.floor(fy).astype(np.int64), h - 2 if h > 1 else 0)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    ax, ay = fx - x0, fy - y0
    if image.ndim == 3:
        ax, ay = ax[..., None], ay[..., None]
    top = image[y0, x0] * (1 - ax) + image[y0, x1] * ax
    bottom = image[y1, x0] * (1 - ax) + image[y1, x1] * ax
    return (top * (1 - ay) + bottom * ay).astype(image.dtype, copy=False), inside


def warp_image(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Backward warp: ``out(p) = image(p + flow(p))``. ``flow`` is (h, w, 2) pixels (x, y).
    Returns the warped image and the mask of samples that fell inside ``image``."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    return sample_bilinear(image, xs + flow[..., 0], ys + flow[..., 1])


def pair_error(
    frame: np.ndarray,
    next_frame: np.ndarray,
    motion: np.ndarray,
    occlusion: np.ndarray,
    mask: np.ndarray | None = None,
) -> float:
    """Mean squared difference between ``frame`` and ``next_frame`` warped back along
    ``motion``, over pixels not occluded (and inside ``mask`` when given). NaN when no pixel
    qualifies."""
    frame = np.asarray(frame, np.float64)
    warped, inside = warp_image(np.asarray(next_frame, np.float64), motion)
    valid = inside & (np.asarray(occlusion) < 0.5)
    if mask is not None:
        valid &= np.asarray(mask, bool)
    if not valid.any():
        return float("nan")
    diff = (frame - warped)[valid]
    return float(np.mean(diff * diff))


def warping_error(
    frames: Sequence[np.ndarray],
    motions: Sequence[np.ndarray],
    occlusions: Sequence[np.ndarray],
    masks: Sequence[np.ndarray] | None = None,
) -> float:
    """Mean of :func:`pair_error` over consecutive pairs (frames[i], frames[i+1]) with
    ``motions[i]`` and ``occlusions[i]`` of frame i. Images (h, w[, c]), any range (refine uses
    sRGB in 0..1). NaN for fewer than two frames."""
    if len(frames) < 2:
        return float("nan")
    errs = [
        pair_error(
            frames[i], frames[i + 1], motions[i], occlusions[i], None if masks is None else masks[i]
        )
        for i in range(len(frames) - 1)
    ]
    errs = [e for e in errs if not np.isnan(e)]
    return float(np.mean(errs)) if errs else float("nan")

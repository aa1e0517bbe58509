"""ControlNet conversions: depth disparity, NormalBAE colours, ADE20K palette, depth range.

NormalBAE convention, source: lllyasviel/ControlNet-v1-1-nightly, annotator/normalbae/
__init__.py writes (n + 1) / 2 * 255 of the ScanNet-trained normal of Bae et al.
(baegwangbin/surface_normal_uncertainty), axes red = left, green = up, blue = towards the
viewer; the rendered cube test in test_render_passes.py checks the signs on real geometry.
"""

from __future__ import annotations

import numpy as np
import pytest

from refine.conditioning import (
    ADE20K_PALETTE,
    bounds_corners,
    depth_range,
    depth_to_control,
    normal_to_control,
    seg_indices,
    seg_to_control,
    to_uint8,
)


def test_facing_normal_is_128_128_255_and_signs():
    n = np.array([[[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])
    img = to_uint8(normal_to_control(n))
    np.testing.assert_array_equal(img[0, 0], [128, 128, 255])
    assert img[0, 1, 0] == 255  # facing the image's left: red
    assert img[0, 2, 1] == 255  # facing up: green
    assert img[0, 3, 0] == 0  # facing right: no red
    masked = to_uint8(normal_to_control(n, mask=np.array([[False, True, True, True]])))
    np.testing.assert_array_equal(masked[0, 0], [128, 128, 255])  # sky reads as facing the camera


def test_depth_disparity_near_white_far_black():
    d = np.array([[2.0, 4.0, 8.0, np.inf, 100.0]], dtype=np.float32)
    c = depth_to_control(d, near=2.0, far=8.0)
    assert c.shape == (1, 5, 3) and c.dtype == np.float32
    np.testing.assert_allclose(
        c[0, :, 0], [1.0, (1 / 4 - 1 / 8) / (1 / 2 - 1 / 8), 0.0, 0.0, 0.0], atol=1e-6
    )
    with pytest.raises(ValueError):
        depth_to_control(d, near=5.0, far=1.0)


def test_seg_palette_is_ade20k():
    assert ADE20K_PALETTE.shape == (150, 3) and ADE20K_PALETTE.dtype == np.uint8
    np.testing.assert_array_equal(
        ADE20K_PALETTE[[0, 1, 2, 8, 42]],
        [[120, 120, 120], [180, 120, 120], [6, 230, 230], [230, 230, 230], [255, 8, 41]],
    )
    img = to_uint8(seg_to_control(np.array([[2, 1], [42, 0]])))
    np.testing.assert_array_equal(img[0, 0], [6, 230, 230])
    with pytest.raises(ValueError):
        seg_to_control(np.array([[150]]))
    # the paletted PNG's pixels: the same colours through the palette, checked the same way
    idx = seg_indices(np.array([[2, 1], [42, 0]]))
    assert idx.dtype == np.uint8
    np.testing.assert_array_equal(ADE20K_PALETTE[idx], img)
    with pytest.raises(ValueError):
        seg_indices(np.array([[-1]]))


def test_depth_range_brackets_a_box_for_every_camera():
    from destruct.camera import CameraFrame, look_at_rotation

    corners = bounds_corners([-1, 0, -1], [1, 2, 1])
    cams = [
        CameraFrame([0, 1, z], look_at_rotation([0, 1, z], [0, 1, 0]), 35, 36, 64, 48)
        for z in (10, 20)
    ]
    near, far = depth_range(corners, [c.view_matrix() for c in cams])
    assert near == pytest.approx(9.0) and far == pytest.approx(21.0)

"""The shot camera: intrinsics from millimetres, projections that agree, keys, shake."""

from __future__ import annotations

import numpy as np
import pytest

from destruct.camera import CameraFrame, camera_at, look_at_rotation, shake_events


def _cam(**kw):
    d = {
        "position": [0.0, 2.0, 10.0],
        "look_at": [0.0, 2.0, 0.0],
        "focal_mm": 35.0,
        "sensor_mm": 36.0,
        "resolution": [160, 120],
        "keys": [],
        "shake": 0.0,
    }
    d.update(kw)
    return d


def test_focal_length_in_pixels_and_centre():
    c = CameraFrame([0, 0, 0], np.eye(3), 35.0, 36.0, 1280, 720)
    assert c.fx == pytest.approx(35.0 / 36.0 * 1280)
    uv, depth = c.project(np.array([[0.0, 0.0, -7.0]]))
    np.testing.assert_allclose(uv, [[640.0, 360.0]])
    assert depth[0] == pytest.approx(7.0)


def test_project_matches_projection_matrix_and_view():
    rng = np.random.default_rng(1)
    c = CameraFrame([1.0, 2.0, 3.0], look_at_rotation([1, 2, 3], [0, 0, -5]), 50.0, 36.0, 160, 120)
    np.testing.assert_allclose(c.view_matrix() @ c.pose(), np.eye(4), atol=1e-12)
    pts = rng.normal([0, 0, -5], 1.0, (20, 3))
    uv, depth = c.project(pts)
    clip = (c.projection(0.1, 100.0) @ c.view_matrix() @ np.c_[pts, np.ones(20)].T).T
    ndc = clip[:, :3] / clip[:, 3:]
    u = (ndc[:, 0] + 1) / 2 * c.width
    v = (1 - ndc[:, 1]) / 2 * c.height  # pixel rows go down
    np.testing.assert_allclose(uv, np.c_[u, v], atol=1e-9)
    np.testing.assert_allclose(depth, clip[:, 3], atol=1e-12)  # w = -z = depth


def test_look_at_rotation_is_a_level_right_handed_frame():
    r = look_at_rotation([5, 3, 5], [0, 1, 0])
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)
    forward = -r[:, 2]
    np.testing.assert_allclose(forward, -np.array([5, 2, 5]) / np.linalg.norm([5, 2, 5]))
    assert abs(r[1, 0]) < 1e-12  # x axis horizontal: no roll
    down = look_at_rotation([0, 10, 0], [0, 0, 0])  # straight down still gives a frame
    np.testing.assert_allclose(-down[:, 2], [0, -1, 0], atol=1e-12)


def test_keys_interpolate_through_keys_and_clamp():
    keys = [
        {"frame": 1001, "position": [0, 2, 10], "look_at": [0, 2, 0]},
        {"frame": 1011, "position": [10, 2, 10], "look_at": [0, 2, 0], "focal_mm": 50.0},
        {"frame": 1021, "position": [20, 2, 10], "look_at": [0, 2, 0]},
    ]
    cam = _cam(keys=keys)
    np.testing.assert_allclose(camera_at(cam, 1011, 1001, 24).position, [10, 2, 10])
    # collinear keys at equal spacing: constant speed, so midway is the midpoint
    np.testing.assert_allclose(camera_at(cam, 1006, 1001, 24).position, [5, 2, 10], atol=1e-12)
    np.testing.assert_allclose(camera_at(cam, 990, 1001, 24).position, [0, 2, 10])
    np.testing.assert_allclose(camera_at(cam, 2000, 1001, 24).position, [20, 2, 10])
    assert camera_at(cam, 1011, 1001, 24).focal_mm == pytest.approx(50.0)
    assert camera_at(cam, 1001, 1001, 24).focal_mm == pytest.approx(
        35.0
    )  # missing key value: the camera's


def test_shake_follows_the_charges_and_repeats():
    charges = [{"time": 1.0, "position": [0, 0, 0], "impulse": 1e5}]
    events = shake_events(charges, [0, 2, 10])
    cam = _cam(shake=0.5)
    still = camera_at(cam, 1001 + 12, 1001, 24, events)  # t = 0.5 s, before the charge
    np.testing.assert_allclose(still.position, [0, 2, 10])
    hit = camera_at(cam, 1001 + 27, 1001, 24, events)  # 0.125 s after it
    moved = np.linalg.norm(hit.position - [0, 2, 10])
    assert 0.0 < moved < 0.5 * np.sqrt(3)
    assert not np.allclose(hit.rotation, still.rotation)
    late = camera_at(cam, 1001 + 24 * 6, 1001, 24, events)  # 5 s later: decayed (e^-8)
    assert np.linalg.norm(late.position - [0, 2, 10]) < 1e-3
    again = camera_at(cam, 1001 + 27, 1001, 24, events)
    np.testing.assert_array_equal(again.position, hit.position)  # farm chunks agree

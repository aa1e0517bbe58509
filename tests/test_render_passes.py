"""Exact passes from the rasteriser: depth, normal (NormalBAE signs), id, motion, occlusion."""

from __future__ import annotations

import numpy as np
import pytest
from _render_synth import box_pieces, sim_frame

from destruct.camera import CameraFrame, look_at_rotation
from destruct.render.passes import Ground, frame_passes, raster_frame
from destruct.render.scene import PieceMesh, bodies_from_sim, material_looks
from refine.conditioning import normal_to_control, to_uint8

W, H = 160, 120


def _cam(pos=(0.0, 0.0, 5.0), target=(0.0, 0.0, 0.0)):
    return CameraFrame(pos, look_at_rotation(pos, target), 36.0, 36.0, W, H)  # fx = 160 px


def _quat(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    return np.r_[np.cos(angle / 2), np.sin(angle / 2) * axis]


def _qmul(a, b):
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ]
    )


def _scene(centers, sizes, frames):
    """PieceMesh plus a raster per frame; frames: list of (positions, rotations)."""
    pc = box_pieces(centers, sizes)
    mesh = PieceMesh(pc, material_looks(pc["material_names"]))
    out = []
    for pos, rot in frames:
        b = bodies_from_sim(sim_frame(1, pos, rot), len(centers), len(centers))
        out.append(raster_frame(mesh.pose(b), b, _cam(), Ground()))
    return mesh, out


def test_unit_cube_depth_and_facing_normal():
    _, (r,) = _scene([[0, 0, 0]], [[1, 1, 1]], [([[0, 0, 0]], None)])
    assert (
        abs(float(r.depth[H // 2, W // 2]) - 4.5) < 1e-3
    )  # front face at z = 0.5, camera at z = 5
    p = frame_passes(r)
    np.testing.assert_allclose(p["normal"][H // 2, W // 2], [0, 0, 1], atol=1e-6)
    png = to_uint8(normal_to_control(p["normal"], np.isfinite(p["depth"])))
    assert np.all(np.abs(png[H // 2, W // 2].astype(int) - [128, 128, 255]) <= 1)
    # the face spans 1 m at 4.5 m: 160 / 4.5 = 35.6 px, so 36 pixel centres each way
    assert (r.ids == 1).sum() == 36 * 36
    assert np.isinf(r.depth[0, 0]) and r.ids[0, 0] == 0


def test_rotated_cube_shows_normalbae_signs():
    """45 degrees about y, then 45 about x: the left face points left (red > 128, BAE's red is
    'left'), the right face right (red < 128) and the top face up (green > 128)."""
    q = _qmul(_quat([1, 0, 0], np.pi / 4), _quat([0, 1, 0], np.pi / 4))
    _, (r,) = _scene([[0, 0, 0]], [[1, 1, 1]], [([[0, 0, 0]], [q])])
    png = to_uint8(normal_to_control(frame_passes(r)["normal"], r.ids > 0))
    left, right, top = (
        png[H // 2 + 8, W // 2 - 12],
        png[H // 2 + 8, W // 2 + 12],
        png[H // 2 - 14, W // 2],
    )
    assert left[0] > 160 and right[0] < 96
    assert top[1] > 160 and left[1] < 128 and right[1] < 128
    assert all(px[2] > 128 for px in (left, right, top))  # all face the camera


def test_translation_motion_and_exact_occlusion_strip():
    # a thin plate facing the camera, moved right by exactly 4 px at its depth (4.9995 m)
    d = 5.0 - 0.0005
    dx = 4.0 * d / 160.0
    _, (r0, r1) = _scene([[0, 0, 0]], [[1, 1, 0.001]], [([[0, 0, 0]], None), ([[dx, 0, 0]], None)])
    fwd = frame_passes(r0, nxt=r1)
    on = r0.ids > 0
    np.testing.assert_allclose(fwd["motion"][on], np.tile([4.0, 0.0], (on.sum(), 1)), atol=0.05)
    rows = np.flatnonzero(on.any(axis=1))
    cols = np.flatnonzero(on.any(axis=0))
    assert len(cols) == 32 and (cols[0], cols[-1]) == (64, 95)
    expect = np.zeros((H, W), bool)
    expect[rows[0] : rows[-1] + 1, 96:100] = True  # sky that the plate covers next frame
    np.testing.assert_array_equal(fwd["occlusion"] > 0, expect)
    back = frame_passes(r1, nxt=r0)  # frame t+1 against t: the uncovered strip on the left
    expect[:] = False
    expect[rows[0] : rows[-1] + 1, 64:68] = True
    np.testing.assert_array_equal(back["occlusion"] > 0, expect)


def test_static_scene_occludes_nothing():
    c = [[x, y, 0] for x in (-1.2, 0, 1.2) for y in (-0.8, 0.8)]
    _, (r0, r1) = _scene(c, [[1, 1, 1]] * 6, [(c, None), (c, None)])
    p = frame_passes(r0, nxt=r1)
    assert p["occlusion"].sum() == 0 and np.abs(p["motion"]).max() < 1e-6


def test_rotation_motion_matches_analytic_image_rotation():
    theta = np.radians(10.0)
    _, (r0, r1) = _scene(
        [[0, 0, 0]],
        [[1.5, 1.5, 0.001]],
        [([[0, 0, 0]], None), ([[0, 0, 0]], [_quat([0, 0, 1], theta)])],
    )
    p = frame_passes(r0, nxt=r1)
    ok = (r0.ids > 0) & (p["occlusion"] == 0)
    assert ok.sum() > 1000
    ys, xs = np.nonzero(ok)
    ox, oy = xs + 0.5 - W / 2, ys + 0.5 - H / 2
    # counter-clockwise in the world (y up) is clockwise in pixel rows (y down)
    ex = ox * np.cos(theta) + oy * np.sin(theta) - ox
    ey = -ox * np.sin(theta) + oy * np.cos(theta) - oy
    np.testing.assert_allclose(p["motion"][ys, xs, 0], ex, atol=0.05)
    np.testing.assert_allclose(p["motion"][ys, xs, 1], ey, atol=0.05)


def test_back_warped_ids_and_exact_id_pass():
    rng = np.random.default_rng(3)
    c = [[x, y, z] for x in (-1.5, 0, 1.5) for y in (-1, 0.2) for z in (0, -1.5)]
    P = len(c)
    c1 = np.array(c) + rng.normal(0, 0.05, (P, 3))
    q1 = [_quat(rng.normal(size=3), 0.1) for _ in range(P)]
    _, (r0, r1) = _scene(c, [[0.9, 0.9, 0.9]] * P, [(c, None), (c1, q1)])
    p = frame_passes(r0, nxt=r1)
    ok = p["occlusion"] == 0
    ys, xs = np.nonzero(ok)
    u = np.floor(xs + 0.5 + p["motion"][ys, xs, 0]).astype(int)
    v = np.floor(ys + 0.5 + p["motion"][ys, xs, 1]).astype(int)
    assert np.mean(r1.ids[v, u] == r0.ids[ys, xs]) > 0.99
    assert r0.ids.dtype == np.uint32
    assert set(np.unique(r0.ids)) <= set(range(P + 1))
    # every piece whose front-facing centre is in view (the front row, z = 0) shows up
    front = [i + 1 for i, cc in enumerate(c) if cc[2] == 0]
    assert set(front) <= set(np.unique(r0.ids).tolist())


@pytest.mark.parametrize("n_dust", [0, 200])
def test_dust_only_in_alpha_seg_and_beauty(n_dust):
    pc = box_pieces([[0, 0, 0]], [[1, 1, 1]])
    mesh = PieceMesh(pc, material_looks(pc["material_names"]))
    b = bodies_from_sim(sim_frame(1, [[0, 0, 0]]), 1, 1)
    r = raster_frame(mesh.pose(b), b, _cam(), Ground())
    rng = np.random.default_rng(0)
    dust = (rng.normal([1.2, 0, 1], 0.2, (n_dust, 3)), np.full(n_dust, 0.3), np.full(n_dust, 0.5))
    p = frame_passes(r, dust=dust, gl_rgba=np.full((H, W, 4), 128, np.uint8))
    assert set(np.unique(p["id"]).tolist()) == {0, 1}  # never in id
    if n_dust:
        assert p["alpha"][r.ids == 0].max() > 0.5 and (p["seg"] == 46).any()
    # alpha: 1 on the pieces, the dust's coverage elsewhere; seg: dust where it covers half
    np.testing.assert_array_equal(p["alpha"], np.where(r.ids > 0, np.float32(1), p["dust"]))
    np.testing.assert_array_equal(p["seg"] == 46, p["dust"] > 0.5)


def test_dust_coverage_equals_the_gaussian_sprites_by_brute_force():
    """Each sprite multiplies the transmittance by 1 - a exp(-2 d^2 / r^2) inside its disc
    where the scene is behind it; sprites cut by every image edge, one left of the image
    whose rows are in view, and one half behind a wall."""
    from destruct.render.raster import dust_alpha

    cam = _cam()  # fx = 160 px at 5 m: 32 px per metre at z = 0
    pos = np.array(
        [[0, 0, 0], [-2.6, 0.3, 0], [-3.2, -0.2, 0], [2.4, -1.8, 0], [0.2, 1.9, 0], [1, 0, -1]]
    )
    radii = np.array([0.5, 0.5, 0.3, 0.5, 0.4, 0.5])
    alphas = np.array([0.5, 0.3, 0.9, 0.4, 0.6, 0.7])
    scene = np.full((H, W), np.inf, dtype=np.float32)
    scene[:, 100:] = 5.5  # a wall in front of the last sprite (depth 6) on the right
    got = dust_alpha(pos, radii, alphas, cam, scene)
    uv, depth = cam.project(pos)
    r_px = radii * cam.fx / depth
    ys, xs = np.mgrid[0:H, 0:W] + 0.5
    t = np.ones((H, W))
    for (u, v), d, r, a in zip(uv, depth, r_px, alphas):
        d2 = (xs - u) ** 2 + (ys - v) ** 2
        t *= np.where((d2 <= r * r) & (scene > d), 1 - a * np.exp(-2 * d2 / (r * r)), 1.0)
    np.testing.assert_allclose(got, 1 - t, atol=1e-6)
    assert got[:, :3].max() > 0.1 and got[:, 100:].max() > 0  # the cut sprites show


def test_srgb_tables_round_trip_and_match_the_transfer_function():
    from destruct.render.passes import linear_to_srgb, linear_to_u8, u8_to_linear

    codes = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(linear_to_u8(u8_to_linear(codes)), codes)  # GL output survives
    x = np.linspace(0, 1, 100001, dtype=np.float32)
    exact = np.floor(linear_to_srgb(x) * 255 + 0.5)
    assert np.abs(linear_to_u8(x).astype(int) - exact).max() <= 1
    assert u8_to_linear(np.uint8(255)) == pytest.approx(1.0) and u8_to_linear(np.uint8(0)) == 0.0

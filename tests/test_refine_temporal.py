"""Warped noise, windows and the warping-error metric (numpy only, no models)."""

from __future__ import annotations

import numpy as np
import pytest

from refine.metrics import pair_error, warp_image, warping_error
from refine.temporal import (
    CrossFrameState,
    TemporalSettings,
    blend_weights,
    fresh_noise,
    latent_flow,
    plan_windows,
    visible_in_previous,
    warp_noise,
    windows_for,
)
from refine.testing import synthetic_passes

C, H, W = 4, 64, 64


def _noise(seed: int = 0) -> np.ndarray:
    return fresh_noise((C, H, W), seed, 1001)


def _uniform(dx: float, dy: float) -> np.ndarray:
    flow = np.zeros((H, W, 2))
    flow[..., 0], flow[..., 1] = dx, dy
    return flow


def _assert_gaussian(n: np.ndarray) -> None:
    assert abs(n.mean()) < 0.05
    assert abs(n.std() - 1.0) < 0.05
    for a, b in ((n[:, :, 1:], n[:, :, :-1]), (n[:, 1:, :], n[:, :-1, :])):
        corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert abs(corr) < 0.05, corr


NO_OCCL = np.zeros((H, W), bool)


def test_identity_motion_returns_the_same_noise():
    n = _noise()
    out, off = warp_noise(n, _uniform(0, 0), NO_OCCL, np.random.default_rng(1))
    np.testing.assert_array_equal(out, n)
    np.testing.assert_array_equal(off, 0)


def test_integer_shift_shifts_the_noise_and_fills_the_entering_edge_fresh():
    n = _noise()
    out, _ = warp_noise(n, _uniform(3, -2), NO_OCCL, np.random.default_rng(1))
    # out[y, x] = n[y + 2, x - 3] where that source exists
    np.testing.assert_array_equal(out[:, : H - 2, 3:], n[:, 2:, : W - 3])
    assert not np.any(out[:, :, :3] == n[:, :, :3])  # the entering columns are fresh samples
    _assert_gaussian(out)


def test_subpixel_shift_stays_gaussian_and_moves_on_average():
    n = _noise()
    out, _off = warp_noise(n, _uniform(0.37, 0.61), NO_OCCL, np.random.default_rng(1))
    _assert_gaussian(out)
    # 0.25 cell per frame accumulates: after 4 frames the noise moved exactly one cell
    slow, offset = n, None
    for k in range(4):
        slow, offset = warp_noise(
            slow, _uniform(0.25, 0.0), NO_OCCL, np.random.default_rng(10 + k), offset
        )
    np.testing.assert_array_equal(slow[:, :, 1:], n[:, :, :-1])


def test_disocclusion_and_stretching_get_fresh_noise_and_stay_gaussian():
    n = _noise()
    occl = np.zeros((H, W), bool)
    occl[16:40, 10:30] = True  # these samples are hidden in the next frame
    ys, xs = np.mgrid[0:H, 0:W] + 0.5
    flow = np.stack([(xs - 32) * 0.15 + 0.3, (ys - 32) * 0.15], -1)  # zoom in: cells spread apart
    out, _ = warp_noise(n, flow, occl, np.random.default_rng(2))
    _assert_gaussian(out)
    # rotation about the centre: collisions and holes
    a = 0.2
    rot = np.stack(
        [
            (np.cos(a) - 1) * (xs - 32) - np.sin(a) * (ys - 32),
            np.sin(a) * (xs - 32) + (np.cos(a) - 1) * (ys - 32),
        ],
        -1,
    )
    out2, _ = warp_noise(out, rot, NO_OCCL, np.random.default_rng(3))
    _assert_gaussian(out2)
    # no sample is duplicated: warp a field of sample ids (fresh samples are never >= 1000)
    ids = np.arange(C * H * W, dtype=np.float32).reshape(C, H, W) + 1000
    moved, _ = warp_noise(ids, rot, NO_OCCL, np.random.default_rng(3))
    kept = moved[moved >= 1000]
    assert len(np.unique(kept)) == kept.size
    assert 0.8 * moved.size < kept.size < moved.size  # most samples move, some cells are fresh


def test_latent_flow_averages_blocks_and_marks_mostly_occluded_cells():
    motion = np.zeros((8, 8, 2), np.float32)
    motion[:4, :4] = (4.0, 2.0)
    occl = np.zeros((8, 8), np.float32)
    occl[4:, 4:6] = 1  # half of the bottom-right 4x4 cell
    occl[4:5, 0:1] = 1  # 1 of 16 pixels of the bottom-left cell
    flow, oc = latent_flow(motion, occl, 4)
    np.testing.assert_allclose(flow[0, 0], (1.0, 0.5))
    np.testing.assert_allclose(flow[1, 1], (0.0, 0.0))
    assert oc[1, 1] and not oc[1, 0] and not oc[0, 0]


def test_windows_cover_every_frame_with_weights_summing_to_one():
    frames = list(range(1001, 1031))
    wins = plan_windows(frames, 8, 3)
    assert wins[0] == tuple(range(1001, 1009)) and wins[1][0] == 1006
    assert sorted({f for w in wins for f in w}) == frames
    weights = blend_weights(wins)
    for f in frames:
        assert sum(w for _, w in weights[f]) == pytest.approx(1.0)
    # the 3 overlap frames of windows 0 and 1 fade 1/4, 2/4, 3/4 towards window 1
    assert [dict(weights[f])[1] for f in (1006, 1007, 1008)] == pytest.approx([0.25, 0.5, 0.75])
    assert windows_for([1010], wins) == [1]
    assert plan_windows(list(range(5)), 16, 4) == [tuple(range(5))]


def test_temporal_settings_refuse_overlap_not_below_window():
    with pytest.raises(ValueError, match="overlap"):
        TemporalSettings(window=4, overlap=4)


def test_warping_error_is_zero_for_exact_motion_and_analytic_for_a_brightness_step():
    passes = synthetic_passes(4, 64, velocity=(2.0, 1.0))
    rgb = [np.stack([p["R"], p["G"], p["B"]], -1) for p in passes]
    mot = [np.stack([p["motion.X"], p["motion.Y"]], -1) for p in passes]
    occ = [p["occlusion.Y"] for p in passes]
    assert warping_error(rgb, mot, occ) < 1e-10
    # every frame 0.1 brighter than the one before: error exactly 0.01 on visible pixels
    brighter = [im + 0.1 * k for k, im in enumerate(rgb)]
    assert warping_error(brighter, mot, occ) == pytest.approx(0.01, rel=1e-6)
    # with the motion ignored the moving square no longer lines up
    zero = [np.zeros_like(m) for m in mot]
    assert warping_error(rgb, zero, occ) > 1e-3


def test_subpixel_motion_warps_with_small_interpolation_error():
    passes = synthetic_passes(2, 64, velocity=(1.5, 0.5))
    rgb = [np.stack([p["R"], p["G"], p["B"]], -1) for p in passes]
    m0 = np.stack([passes[0]["motion.X"], passes[0]["motion.Y"]], -1)
    err = pair_error(rgb[0], rgb[1], m0, passes[0]["occlusion.Y"])
    assert err < 2e-3  # bilinear re-sampling of a bilinear texture: small, not zero


def test_visible_in_previous_flags_disoccluded_pixels():
    p0, p1 = synthetic_passes(2, 64, velocity=(3.0, 0.0))
    back = np.stack([p1["back.X"], p1["back.Y"]], -1)
    m0 = np.stack([p0["motion.X"], p0["motion.Y"]], -1)
    vis = visible_in_previous(back, m0, p0["occlusion.Y"])
    square1 = p1["id"] > 0
    square0 = p0["id"] > 0
    # background pixels the square uncovered (covered in frame 0, not in frame 1) are not visible
    uncovered = square0 & ~square1
    assert uncovered.sum() == 3 * 24
    assert not vis[uncovered].any()
    # the square's interior is visible, and so is untouched background
    assert vis[square1 & np.roll(square1, 3, axis=1)].all()
    assert vis[~square0 & ~square1].all()
    warped, _inside = warp_image(np.stack([p0["R"], p0["G"], p0["B"]], -1), back)
    np.testing.assert_allclose(
        warped[vis], np.stack([p1["R"], p1["G"], p1["B"]], -1)[vis], atol=1e-5
    )


def test_cross_frame_state_pools_the_anchor_2x2_in_large_layers_only():
    torch = pytest.importorskip("torch")
    st = CrossFrameState(pool_min_tokens=1024)
    st.begin("record", (90, 160))  # a 720x1280 frame at vae factor 8
    assert st.layer_hw(90 * 160) == (90, 160)
    assert st.layer_hw(45 * 80) == (45, 80)
    assert st.layer_hw(23 * 40) == (23, 40)  # 45 rounds up, as the UNet's strided convs do
    assert st.layer_hw(7) is None
    st.begin("record", (64, 64))
    x = torch.arange(2 * 1024 * 3, dtype=torch.float32).reshape(2, 1024, 3)
    pooled = st.pooled(x)
    assert pooled.shape == (2, 256, 3)
    grid = x.reshape(2, 32, 32, 3)
    torch.testing.assert_close(pooled[1, 0], grid[1, :2, :2].mean(dim=(0, 1)))
    small = torch.ones(2, 256, 3)
    assert st.pooled(small) is small

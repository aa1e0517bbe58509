"""A rubble bit's motion vectors equal its exact projected movement (issue 5 meets issue 6).

The bit translates and spins between two frames; for every one of its non-occluded pixels, the
surface point under the pixel centre is moved rigidly to the next frame and projected: the
motion pass must equal that displacement within 0.05 px.
"""

from __future__ import annotations

import numpy as np
from _render_synth import box_pieces, sim_frame, write_run
from scipy.spatial.transform import Rotation

from destruct.render.exr import read_exr

SLOT = 5


def _rubble(position, angle_deg):
    q = Rotation.from_euler("y", angle_deg, degrees=True).as_quat()  # xyzw
    return {
        "id": np.array([SLOT], np.int32),
        "position": np.array([position], np.float32),
        "rotation": np.array([[q[3], q[0], q[1], q[2]]], np.float32),
        "velocity": np.zeros((1, 3), np.float32),
        "radius": np.array([0.6], np.float32),
        "material": np.zeros(1, np.int32),
    }


def test_rubble_motion_matches_its_projected_movement(tmp_path):
    from destruct.render import run_render
    from destruct.rundir import RunDir
    from destruct.shot import shot_from_dict
    from destruct.stages import Stage, StageContext
    from destruct.usd import camera_frames

    pieces = box_pieces([[30.0, 0.5, -30.0]], [[1.0, 1.0, 1.0]])  # one piece, out of view
    p0, p1 = np.array([0.0, 1.0, 0.0]), np.array([0.12, 1.05, 0.03])
    frames = {
        1: sim_frame(1, pieces["com"], rubble=_rubble(p0, 0.0)),
        2: sim_frame(2, pieces["com"], rubble=_rubble(p1, 12.0)),
    }
    write_run(tmp_path, pieces, frames)
    shot = shot_from_dict(
        {
            "shot": {"name": "rb", "frames": 2, "start_frame": 1},
            "camera": {
                "position": [0.0, 1.2, 4.0],
                "look_at": [0.0, 1.0, 0.0],
                "resolution": [96, 64],
            },
        }
    )
    run_render(StageContext(shot=shot, run=RunDir(tmp_path), stage=Stage.RENDER, frames=[1, 2]))

    d = read_exr(tmp_path / "passes" / "rb.0001.exr")
    rubble_id = 1 + 1 + SLOT  # after the one piece
    mask = (d["id"] == rubble_id) & (d["occlusion.Y"] == 0)
    assert mask.sum() > 100
    cams = camera_frames(shot, [1, 2])
    c = cams[1]
    v, u = np.nonzero(mask)
    depth = d["depth.Z"][mask].astype(np.float64)
    x = (u + 0.5 - c.cx) / c.fx * depth
    y = -(v + 0.5 - c.cy) / c.fy * depth
    world = np.stack([x, y, -depth], 1) @ c.rotation.T + c.position
    spin = Rotation.from_euler("y", 12.0, degrees=True).as_matrix()
    moved = (world - p0) @ spin.T + p1
    uv_now, _ = c.project(world)
    uv_next, _ = cams[2].project(moved)
    np.testing.assert_allclose(uv_now, np.stack([u + 0.5, v + 0.5], 1), atol=1e-3)
    expected = uv_next - uv_now
    got = np.stack([d["motion.X"][mask], d["motion.Y"][mask]], 1)
    assert np.abs(got - expected).max() < 0.05

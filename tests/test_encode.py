"""The encode stage: preview.mp4 (sRGB, yuv420p, even size), overview.png, sim_stats.png."""

from __future__ import annotations

import numpy as np
from _render_synth import box_pieces, sim_frame, write_run

from destruct.encode import run_encode, sim_stats, write_mp4


def test_mp4_is_yuv420p_even_sized_and_complete(tmp_path):

    frames = [np.full((31, 45, 3), (40 * k, 100, 200), np.uint8) for k in range(5)]  # odd size
    assert write_mp4(tmp_path / "a.mp4", iter(frames), 24) == 5
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(tmp_path / "a.mp4"))
    info = next(reader)
    got = list(reader)
    assert info["size"] == (46, 32) and len(got) == 5
    assert "yuv420p" in info["pix_fmt"] or "yuv420p" in str(info)
    first = np.frombuffer(got[0], np.uint8).reshape(32, 46, 3)
    assert np.abs(first[:31, :45].astype(int) - [0, 100, 200]).mean() < 6  # colours survive
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_encode_stage_on_a_rendered_run(tmp_path):
    from destruct.render import run_render
    from destruct.rundir import RunDir
    from destruct.shot import shot_from_dict
    from destruct.stages import Stage, StageContext

    centers = [[0.0, 0.5, 0.0], [1.0, 0.5, 0.0], [0.5, 1.5, 0.0]]
    pc = box_pieces(centers, [[0.95, 0.95, 0.95]] * 3)
    bonds = {
        "pairs": np.array([[0, 1], [0, 2], [1, 2], [0, -1]], np.int32),
        "points": np.array([[0.5, 0.5, 0], [0.25, 1.0, 0], [0.75, 1.0, 0], [0, 0, 0]], np.float64),
        "normals": np.tile([1.0, 0, 0], (4, 1)),
        "areas": np.ones(4),
        "tensile": np.ones(4),
        "shear": np.ones(4),
        "compressive": np.ones(4),
    }
    frames = {}
    for k, f in enumerate(range(1001, 1004)):
        d = sim_frame(f, np.array(centers) + [0, -0.1 * k, 0], n_bonds=4)
        d["bond_broken"] = np.array([False, k > 0, k > 1, False])
        d["kinetic_energy"] = np.float64(10.0 * k)
        frames[f] = d
    write_run(tmp_path, pc, frames, bonds)
    shot = shot_from_dict(
        {
            "shot": {"name": "enc", "frames": 3, "start_frame": 1001},
            "camera": {
                "position": [0.5, 1.0, 6.0],
                "look_at": [0.5, 1.0, 0.0],
                "resolution": [64, 48],
            },
        }
    )
    run_render(
        StageContext(shot=shot, run=RunDir(tmp_path), stage=Stage.RENDER, frames=[1001, 1002, 1003])
    )
    figures = run_encode(
        StageContext(shot=shot, run=RunDir(tmp_path), stage=Stage.ENCODE, frames=[1001, 1002, 1003])
    )
    assert (
        figures["preview_frames"] == 3
        and figures["overview_frame"] == 1002
        and figures["bonds_broken"] == 2
    )
    for f in ("preview.mp4", "overview.png", "sim_stats.png"):
        assert (tmp_path / f).stat().st_size > 1000, f
    assert not (tmp_path / "refined.mp4").exists()
    stats = sim_stats(tmp_path, [1001, 1002, 1003])
    np.testing.assert_array_equal(stats["bonds_broken"], [0, 1, 2])
    np.testing.assert_allclose(stats["kinetic_energy"], [0, 10, 20])

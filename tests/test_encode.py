"""The encode stage: preview.mp4 (sRGB, yuv420p, even size), overview.png, sim_stats.png."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from _render_synth import box_pieces, sim_frame, write_run

from destruct.encode import run_encode, sim_stats, write_mp4
from destruct.errors import UserError
from destruct.render import run_render
from destruct.rundir import RunDir
from destruct.shot import shot_from_dict
from destruct.stages import Stage, StageContext


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


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """Three frames of three boxes, rendered (passes/ and the manifest's render entry)."""
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
    tmp_path = tmp_path_factory.mktemp("enc")
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
    ctx = StageContext(
        shot=shot, run=RunDir(tmp_path), stage=Stage.RENDER, frames=[1001, 1002, 1003]
    )
    run_render(ctx)
    return shot, tmp_path


def _encode(shot, run_dir):
    return run_encode(
        StageContext(shot=shot, run=RunDir(run_dir), stage=Stage.ENCODE, frames=[1001, 1002, 1003])
    )


def test_encode_stage_on_a_rendered_run(rendered, tmp_path):
    shot, src = rendered
    shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    figures = _encode(shot, tmp_path)
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


@pytest.mark.parametrize(
    "damage", ["png cut short", "exr cut short", "frame deleted", "frame not rendered"]
)
def test_damaged_or_missing_passes_are_one_user_error(rendered, tmp_path, damage):
    """A beauty PNG or EXR that no longer decodes, or a rendered frame's files deleted: one
    UserError naming the file or frame and the re-render, and no preview of the frames that
    are left."""
    shot, src = rendered
    shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    png = tmp_path / "passes" / "beauty" / "enc.1002.png"
    exr = tmp_path / "passes" / "enc.1002.exr"
    if damage == "png cut short":
        png.write_bytes(png.read_bytes()[:200])
        match = "enc.1002.png is not a readable image"
    elif damage == "exr cut short":
        png.unlink()  # encode falls back to the EXR's beauty
        exr.write_bytes(exr.read_bytes()[:300])
        match = "enc.1002.exr is not a readable EXR"
    elif damage == "frame deleted":
        png.unlink()
        exr.unlink()
        match = "frame 1002 is recorded as rendered but .* has no beauty"
    else:  # a farm chunk not landed yet, between two that have
        png.unlink()
        exr.unlink()
        manifest = RunDir(tmp_path)
        with manifest.update() as m:
            m["stages"]["render"]["frames_done"] = [1001, 1003]
        match = "frame 1002 is not rendered yet, between rendered ones"
    with pytest.raises(UserError, match=match) as e:
        _encode(shot, tmp_path)
    assert "--stages render" in str(e.value) or "render with --force" in str(e.value)
    assert "--force" in str(e.value) or damage == "frame not rendered"
    assert not (tmp_path / "preview.mp4").exists()


def test_without_a_beauty_pass_encode_is_skipped_saying_why(rendered, tmp_path):
    from destruct.errors import StageSkipped

    shot, src = rendered
    shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    data = shot.model_dump()
    data["render"]["passes"] = ["depth", "normal"]
    with pytest.raises(StageSkipped, match="render.passes has no 'beauty'"):
        _encode(shot_from_dict(data), tmp_path)
    assert not (tmp_path / "preview.mp4").exists()

"""Wedges: variants as the cartesian product of --set values, a contact sheet and an index."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest

from destruct import stages as stage_registry
from destruct.errors import UserError
from destruct.io import save_png
from destruct.stages import Stage
from destruct.wedge import parse_set, run_wedge, variants

SHOT = """
[shot]
name = "w"
frames = 3
start_frame = 1
[fracture]
pieces = 10
[camera]
resolution = [64, 48]
[[charges]]
time = 0.05
position = [0.0, 1.0, 0.0]
radius = 1.0
impulse = 100.0
"""


def grey_render(ctx):
    """A stand-in render: each frame's beauty is a flat grey set by the variant's piece count."""
    for f in ctx.frames_todo():
        w, h = ctx.shot.camera.resolution
        save_png(
            ctx.path("passes", "beauty", f"{ctx.shot.shot.name}.{f:04d}.png"),
            np.full((h, w, 3), ctx.shot.fracture.pieces, np.uint8),
        )
        ctx.frame_done(f)
    return {"pieces": ctx.shot.fracture.pieces}


@pytest.fixture
def shot_file(tmp_path, monkeypatch):
    # stand-in stages (the orchestration is under test here, not the physics)
    monkeypatch.setitem(stage_registry.ENTRY_POINTS, Stage.PREPARE, "test_pipeline:fake_prepare")
    monkeypatch.setitem(stage_registry.ENTRY_POINTS, Stage.SIMULATE, "test_pipeline:fake_simulate")
    monkeypatch.setitem(stage_registry.ENTRY_POINTS, Stage.RENDER, "test_wedge:grey_render")
    p = tmp_path / "w.toml"
    p.write_text(SHOT)
    return p


def test_parse_set_values():
    assert parse_set("fracture.pieces=400,800") == ("fracture.pieces", [400, 800])
    assert parse_set("charges.0.impulse=1e4,2e4") == ("charges.0.impulse", [1e4, 2e4])
    assert parse_set("camera.position=[1,2,3],[4,5,6]") == (
        "camera.position",
        [[1, 2, 3], [4, 5, 6]],
    )
    assert parse_set("building.material=brick,concrete") == (
        "building.material",
        ["brick", "concrete"],
    )
    with pytest.raises(UserError, match="use key=v1,v2"):
        parse_set("fracture.pieces")


def test_variants_are_the_cartesian_product(shot_file):
    vs = variants(shot_file, ["fracture.pieces=20,40", "charges.0.impulse=1e2,2e2,3e2"])
    assert len(vs) == 6 and len({v.name for v in vs}) == 6
    assert [(v.shot.fracture.pieces, v.shot.charges[0].impulse) for v in vs][:2] == [
        (20, 100.0),
        (20, 200.0),
    ]
    with pytest.raises(UserError, match="index '3' is not one of them"):
        variants(shot_file, ["charges.3.impulse=1,2"])
    with pytest.raises(UserError, match="fracture.pieces = -1"):
        variants(shot_file, ["fracture.pieces=-1,5"])
    with pytest.raises(UserError, match="--set shot.frames is given twice"):
        variants(shot_file, ["shot.frames=2", "shot.frames=3"])


def test_two_variant_wedge_writes_runs_sheet_and_index(shot_file, tmp_path):
    out = tmp_path / "wedge"
    index = run_wedge(
        shot_file,
        ["fracture.pieces=20,40"],
        out=out,
        stages="prepare,simulate,render",
        log=lambda m: None,
    )
    assert [v["values"] for v in index["variants"]] == [
        {"fracture.pieces": 20},
        {"fracture.pieces": 40},
    ]
    for v in index["variants"]:
        m = json.loads((out / v["name"] / "manifest.json").read_text())
        assert m["stages"]["render"]["status"] == "done"
        assert m["stages"]["prepare"]["figures"]["pieces"] == v["values"]["fracture.pieces"]
    assert json.loads((out / "index.json").read_text())["format"] == "destruct.wedge/1"
    assert "| [w_w00](w_w00/) | 20 |" in (out / "index.md").read_text()
    sheet = iio.imread(out / "contact_sheet.png")
    assert sheet.shape[1] == 2 * 480
    # each tile shows its own variant's frame: grey 20 on the left, grey 40 on the right
    assert sheet[-5, 10, 0] == 20 and sheet[-5, 490, 0] == 40

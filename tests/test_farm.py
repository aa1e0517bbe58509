"""Scale-out on a local Ray cluster (issue 11): farmed refine windows equal a sequential run,
a worker killed mid-window is retried, and a wedge runs its variants as Ray tasks."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")

from test_refine_stage import FIRST, N, _ctx, _refine_table, _write_passes, models  # noqa: F401

from refine import stage as refine_stage
from refine.farm import plan, refine_windows


def _frames(ctx):
    return {
        f: (ctx.run_dir / "refine" / f"t.{f:04d}.png").read_bytes() for f in range(FIRST, FIRST + N)
    }


@pytest.fixture(scope="module")
def sequential(models, tmp_path_factory):  # noqa: F811
    seq = _ctx(tmp_path_factory.mktemp("seq"), _refine_table(models), plate=False)
    _write_passes(seq.run_dir)
    refine_stage.run_refine(seq)
    return _frames(seq)


def _farmed(models, folder, ray, monkeypatch, **kw):  # noqa: F811
    farm = _ctx(folder, _refine_table(models), plate=False)
    _write_passes(farm.run_dir)
    seen = []
    paths = refine_windows(
        farm.shot, farm.run_dir, ray, actors=2, progress=lambda d, t: seen.append((d, t)), **kw
    )
    assert len(paths) == 2 and all(p.endswith(".npz") for p in paths)
    assert seen == [(1, 2), (2, 2)]
    refined_here = []
    real = refine_stage._LazyFrames
    monkeypatch.setattr(
        refine_stage, "_LazyFrames", lambda r, w: refined_here.append(w) or real(r, w)
    )
    refine_stage.run_refine(farm)
    monkeypatch.undo()
    assert refined_here == []  # the stage only cross-faded the farmed windows
    return _frames(farm)


@pytest.mark.slow
def test_two_window_farm_equals_sequential(models, sequential, ray_local, tmp_path, monkeypatch):  # noqa: F811
    assert _farmed(models, tmp_path, ray_local, monkeypatch) == sequential


@pytest.mark.slow
def test_killed_worker_window_is_retried(models, sequential, ray_local, tmp_path, monkeypatch):  # noqa: F811
    marker = tmp_path / "crash_window"
    marker.write_text("1")
    assert _farmed(models, tmp_path, ray_local, monkeypatch, crash_once=str(marker)) == sequential
    assert not marker.exists()  # the worker did die on window 1, and the retry completed it


def test_plan_uses_gpus_when_the_cluster_has_them():
    class FakeRay:
        def __init__(self, res):
            self.res = res

        def cluster_resources(self):
            return self.res

    assert plan(FakeRay({"CPU": 16.0, "GPU": 4.0}), None, 1.0) == (
        4,
        {"num_gpus": 1, "num_cpus": 1},
    )
    assert plan(FakeRay({"CPU": 8.0}), None, 2.0) == (4, {"num_gpus": 0, "num_cpus": 2.0})
    assert plan(FakeRay({"CPU": 8.0}), 3, 1.0)[0] == 3


WEDGE_SHOT = """
[shot]
name = "wr"
frames = 3
start_frame = 1
[building]
procedural = { floors = 1, bays_x = 1, bays_z = 1, bay = 3.0, story = 3.0, windows = false }
[fracture]
pieces = 8
[sim]
backend = "cpu"
threads = 1
preroll = 0.0
[camera]
position = [8.0, 4.0, 10.0]
look_at = [1.5, 1.5, 1.5]
resolution = [64, 48]
[refine]
enabled = false
"""


@pytest.mark.slow
def test_two_variant_wedge_on_ray(ray_local, tmp_path):
    from destruct.wedge import run_wedge

    shot = tmp_path / "wr.toml"
    shot.write_text(WEDGE_SHOT)
    index = run_wedge(
        shot,
        ["fracture.pieces=8,12"],
        out=tmp_path / "w",
        stages="prepare,simulate,render",
        ray_address="local",
        log=lambda m: None,
    )
    assert [v["values"]["fracture.pieces"] for v in index["variants"]] == [8, 12]
    for v in index["variants"]:
        m = json.loads((tmp_path / "w" / v["name"] / "manifest.json").read_text())
        assert m["stages"]["render"]["status"] == "done"
        assert m["stages"]["prepare"]["figures"]["pieces"] >= v["values"]["fracture.pieces"]
    assert (tmp_path / "w" / "contact_sheet.png").stat().st_size > 1000
    assert (tmp_path / "w" / "index.md").is_file()

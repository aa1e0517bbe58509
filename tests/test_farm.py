"""Scale-out on a local Ray cluster (issue 11): farmed refine windows equal a sequential run,
a worker killed mid-window is retried, and a wedge runs its variants as Ray tasks."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("diffusers")

from test_refine_stage import FIRST, N, _ctx, _refine_table, _write_passes, models  # noqa: F401

from destruct import stages as stage_registry
from destruct.cli import main
from destruct.errors import UserError
from destruct.io import TMP_PREFIX
from destruct.raycluster import connect
from destruct.stages import Stage
from refine import stage as refine_stage
from refine.farm import plan, refine_windows

NO_RAY = "Ray is not installed: pip install 'destruct[farm]'"


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
def test_worker_killed_mid_window_is_retried(models, sequential, ray_local, tmp_path, monkeypatch):  # noqa: F811
    marker = tmp_path / "crash_window"
    marker.write_text("1")
    farmed = _farmed(models, tmp_path, ray_local, monkeypatch, crash_once=str(marker))
    # the worker died on window 1 between its first and second frame (the hook rewrote the
    # marker just before os._exit), and the retried window gives the sequential run's bytes
    assert marker.read_text() == "killed after 1 frame of window 1"
    assert farmed == sequential
    assert list(tmp_path.rglob(f"{TMP_PREFIX}*")) == []  # no half-written file is left


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["weights not in the cache", "cuda on a CPU machine"])
def test_a_worker_that_cannot_load_the_pipeline_is_said_as_on_the_driver(
    models,  # noqa: F811
    ray_local,
    tmp_path,
    problem,
):
    """Missing weights or a device the workers lack: the driver raises what the sequential
    refine raises (MissingWeights, which the stage records as skipped; a one-line UserError),
    not Ray's wrapped actor death."""
    from refine.models import MissingWeights

    table = _refine_table(models)
    if problem == "weights not in the cache":
        table["model"] = "someorg/notcached"
        expected, match = MissingWeights, "someorg/notcached"
    else:
        table["device"] = "cuda"
        expected, match = UserError, "^on a Ray worker: refine device 'cuda'"
    farm = _ctx(tmp_path, table, plate=False)
    _write_passes(farm.run_dir)
    with pytest.raises(expected, match=match) as e:
        refine_windows(farm.shot, farm.run_dir, ray_local, actors=1)
    assert len(str(e.value).splitlines()) == 1


def test_missing_ray_is_a_user_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ModuleNotFoundError
    with pytest.raises(UserError, match=r"^Ray is not installed: pip install 'destruct\[farm\]'"):
        connect("auto")


def test_cli_run_with_ray_but_no_ray_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    # stand-in upstream stages: the refine stage is reached with frames to do, and farms them
    for stage, fn in (
        (Stage.PREPARE, "fake_prepare"),
        (Stage.SIMULATE, "fake_simulate"),
        (Stage.RENDER, "fake_render"),
        (Stage.REFINE, "fake_refine"),
    ):
        monkeypatch.setitem(stage_registry.ENTRY_POINTS, stage, f"test_pipeline:{fn}")
    shot = tmp_path / "r.toml"
    shot.write_text('[shot]\nname = "r"\nframes = 2\n[fracture]\npieces = 3\n')
    code = main(["run", str(shot), "--out", str(tmp_path / "run"), "--quiet", "--ray", "auto"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {NO_RAY}"), err
    refine = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["refine"]
    assert refine["status"] == "failed" and refine["reason"].startswith(NO_RAY)


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
    on_disk = json.loads((tmp_path / "w" / "index.json").read_text())
    assert on_disk == index and on_disk["format"] == "destruct.wedge/1"
    assert (
        on_disk["axes"] == ["fracture.pieces"] and on_disk["contact_sheet"] == "contact_sheet.png"
    )
    assert [(v["name"], v["run_dir"]) for v in on_disk["variants"]] == [
        ("wr_w00", "wr_w00"),
        ("wr_w01", "wr_w01"),
    ]
    for v in on_disk["variants"]:  # each variant's stages as its own run directory recorded them
        m = json.loads((tmp_path / "w" / v["run_dir"] / "manifest.json").read_text())
        assert {k: e["status"] for k, e in v["stages"].items()} == {
            k: e["status"] for k, e in m["stages"].items()
        }
        assert v["stages"]["prepare"]["figures"] == m["stages"]["prepare"]["figures"]


def test_a_bad_ray_address_or_a_broken_ray_is_one_user_error(tmp_path, monkeypatch):
    """--ray "not a host" is refused before any stage runs; a Ray that is installed but does
    not import is named as such."""
    from destruct.pipeline import run
    from destruct.shot import shot_from_dict

    shot = shot_from_dict({"shot": {"name": "r", "frames": 2}})
    with pytest.raises(UserError, match="--ray 'not a host' is not a Ray address"):
        run(shot, tmp_path / "run", ray="not a host")
    assert not (tmp_path / "run").exists()

    class Broken:
        def find_spec(self, name, path=None, target=None):
            if name == "ray":
                raise ImportError("libfoo.so: cannot open shared object file")

    monkeypatch.delitem(sys.modules, "ray", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    with pytest.raises(UserError, match="Ray does not import .*libfoo.so"):
        connect("auto")

"""The refine stage on a run directory of synthetic passes (EXR + seg PNG), tiny models, CPU."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("diffusers")

import imageio.v3 as iio
import torch
from huggingface_hub import constants

from destruct.errors import StageSkipped
from destruct.io import save_json, save_png
from destruct.render.exr import write_exr
from destruct.rundir import RunDir
from destruct.shot import shot_from_dict
from destruct.stages import Stage, StageContext
from refine import stage as refine_stage
from refine.conditioning import seg_to_control, to_uint8
from refine.testing import save_tiny_set, synthetic_passes

N, SIZE, FIRST = 5, 64, 1001


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield save_tiny_set(tmp_path_factory.mktemp("tiny"), kinds=("depth", "seg"))
    torch.set_num_threads(threads)


def _write_passes(run_dir, name="t"):
    """Synthetic passes with alpha = the moving square only (a far wall is the 'plate')."""
    passes = synthetic_passes(N, SIZE, velocity=(2.0, 1.0))
    out = run_dir / "passes"
    save_json(
        out / "depth_range.json", {"format": "destruct.depthrange/1", "near": 4.0, "far": 25.0}
    )
    for k, p in enumerate(passes):
        f = FIRST + k
        layers = {c: p[c].astype(np.float16) for c in "RGB"}
        layers["A"] = (p["id"] > 0).astype(np.float16)
        for c in (
            "depth.Z",
            "N.X",
            "N.Y",
            "N.Z",
            "motion.X",
            "motion.Y",
            "back.X",
            "back.Y",
            "occlusion.Y",
        ):
            layers[c] = p[c].astype(np.float32)
        layers["id"] = p["id"]
        write_exr(out / f"{name}.{f:04d}.exr", layers)
        save_png(
            out / "seg" / f"{name}.{f:04d}.png",
            to_uint8(seg_to_control(np.where(p["id"] > 0, 1, 0))),
        )


def _plates(folder):
    rng = np.random.default_rng(5)
    for k in range(N):
        save_png(
            folder / "plates" / f"bg.{FIRST + k:04d}.png",
            rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
        )


def _ctx(tmp_path, refine, *, plate=True, force=False, frames=None):
    if plate:
        _plates(tmp_path)
    data = {
        "shot": {"name": "t", "frames": N, "seed": 7},
        "camera": {"resolution": [SIZE, SIZE]},
        "render": {"plate": "plates/bg.####.png"} if plate else {},
        "refine": refine,
    }
    shot = shot_from_dict(data, base_dir=tmp_path)
    run = RunDir(tmp_path / "run")
    run.root.mkdir(parents=True, exist_ok=True)
    return StageContext(
        shot=shot, run=run, stage=Stage.REFINE, frames=frames or shot.frame_numbers(), force=force
    )


def _refine_table(models):
    return {
        "model": models["model"],
        "controlnets": models["controlnets"],
        "prompt": "a concrete building",
        "steps": 2,
        "strength": 1.0,
        "device": "cpu",
        "temporal": {"window": 3, "overlap": 1},
    }


def test_refine_stage_writes_frames_keeps_the_plate_and_reports_warping_error(
    models, tmp_path, monkeypatch
):
    ctx = _ctx(tmp_path, _refine_table(models))
    _write_passes(ctx.run_dir)
    figures = refine_stage.run_refine(ctx)
    assert (
        figures["frames_refined"] == N and figures["family"] == "sd15" and figures["windows"] == 2
    )
    assert ctx.run.stage("refine")["frames_done"] == list(range(FIRST, FIRST + N))
    passes = synthetic_passes(N, SIZE, velocity=(2.0, 1.0))
    for k in range(N):
        img = iio.imread(ctx.run_dir / "refine" / f"t.{FIRST + k:04d}.png")
        plate = iio.imread(tmp_path / "plates" / f"bg.{FIRST + k:04d}.png")
        outside = passes[k]["id"] == 0
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
        np.testing.assert_array_equal(img[outside], plate[outside])  # plate untouched outside alpha
        assert np.abs(img[~outside].astype(int) - plate[~outside]).mean() > 5  # refined inside
    assert figures["warping_error_coarse"] < 1e-5  # the coarse square moves exactly with its motion
    assert figures["warping_error_temporal"] > 0
    probe = figures["probe"]
    assert probe["frames"] == 4 and probe["temporal"] <= 0.5 * probe["per_frame"]

    # per-window resume: with the frames forgotten, a rerun reads the cached windows
    with ctx.run.update() as m:
        m["stages"]["refine"]["frames_done"] = []
    before = {
        f: (ctx.run_dir / "refine" / f"t.{f:04d}.png").read_bytes() for f in range(FIRST, FIRST + N)
    }
    windows_refined = []
    real = refine_stage._LazyFrames
    monkeypatch.setattr(
        refine_stage, "_LazyFrames", lambda r, w: windows_refined.append(w) or real(r, w)
    )
    again = refine_stage.run_refine(_ctx(tmp_path, _refine_table(models)))
    assert again["frames_refined"] == N and windows_refined == []
    for f, data in before.items():
        assert (ctx.run_dir / "refine" / f"t.{f:04d}.png").read_bytes() == data


def test_a_farm_chunk_refines_only_the_windows_holding_its_frames(models, tmp_path, monkeypatch):
    table = _refine_table(models)
    ctx = _ctx(tmp_path, table, plate=False, frames=[1004, 1005])
    _write_passes(ctx.run_dir)
    windows_refined = []
    real = refine_stage._LazyFrames
    monkeypatch.setattr(
        refine_stage, "_LazyFrames", lambda r, w: windows_refined.append(tuple(w)) or real(r, w)
    )
    figures = refine_stage.run_refine(ctx)
    assert windows_refined == [(1003, 1004, 1005)]
    assert figures["frames_refined"] == 2
    assert sorted(p.name for p in (ctx.run_dir / "refine").glob("*.png")) == [
        "t.1004.png",
        "t.1005.png",
    ]


def test_missing_weights_skip_the_stage_with_the_exact_command(tmp_path, monkeypatch):
    cache = tmp_path / "empty_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    ctx = _ctx(tmp_path, {"steps": 2}, plate=False)  # the default SD 1.5 set, not pulled here
    with pytest.raises(StageSkipped) as e:
        refine_stage.run_refine(ctx)
    assert e.value.reason == "no weights: destruct models pull sd15"

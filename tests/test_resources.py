"""Memory guards: a stage refuses to start when its estimate exceeds the memory available."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from destruct import resources
from destruct.errors import UserError
from destruct.shot import shot_from_dict
from destruct.stages import Stage

GIB = 2**30


def test_default_shot_fits_this_machine():
    shot = shot_from_dict({})
    for stage in Stage:
        assert resources.estimate(shot, stage) < 8 * GIB


def test_estimates_grow_with_the_sizes_they_depend_on():
    small = shot_from_dict({"fracture": {"pieces": 100}, "camera": {"resolution": [320, 240]}})
    big = shot_from_dict(
        {
            "fracture": {"pieces": 100_000},
            "camera": {"resolution": [8192, 8192]},
            "debris": {"max_particles": 10_000_000},
        }
    )
    for stage in Stage:
        assert resources.estimate(big, stage) > resources.estimate(small, stage)
    assert resources.estimate(big, Stage.RENDER) > 24 * GIB


def test_refusal_names_the_setting_to_lower():
    big = shot_from_dict({"camera": {"resolution": [8192, 8192]}})
    with pytest.raises(
        UserError, match=r"stage 'render' needs about .* GiB .* lower camera.resolution"
    ):
        resources.check(big, Stage.RENDER, avail=4 * GIB)
    assert resources.check(big, Stage.PREPARE, avail=4 * GIB) < 4 * GIB


def test_gpu_guard_refuses_simulate_beyond_the_free_gpu_memory():
    shot = shot_from_dict({"sim": {"backend": "cuda"}, "fracture": {"pieces": 20_000}})
    need = resources.estimate_gpu(shot, Stage.SIMULATE)
    assert need > resources.TAICHI_POOL + 20_000 * resources.PER_PIECE[Stage.SIMULATE]
    host = 64 * GIB
    with pytest.raises(
        UserError,
        match=r"stage 'simulate' needs about .* GiB of GPU memory .*\(sim.backend = 'cuda'\) but "
        r"1.0 GiB is free on the GPU; lower fracture.pieces or debris.max_particles, or use "
        r'sim.backend = "cpu"',
    ):
        resources.check(shot, Stage.SIMULATE, avail=host, gpu_avail=GIB)
    assert resources.check(shot, Stage.SIMULATE, avail=host, gpu_avail=need) < host
    # the CPU backend (shot or --backend) never asks the GPU
    resources.check(shot, Stage.SIMULATE, avail=host, backend="cpu", gpu_avail=1)
    with pytest.raises(UserError, match=r"\(--backend = 'auto'\)"):
        resources.check(shot, Stage.SIMULATE, avail=host, backend="auto", gpu_avail=GIB)
    # stages that never use CUDA are not checked against it
    for stage in (Stage.PREPARE, Stage.RENDER, Stage.ENCODE):
        assert resources.estimate_gpu(shot, stage) == 0
        resources.check(shot, stage, avail=host, gpu_avail=1)


def test_gpu_guard_refuses_refine_and_names_cpu_offload():
    shot = shot_from_dict({"refine": {"device": "cuda"}})
    need = resources.estimate_gpu(shot, Stage.REFINE)
    with pytest.raises(
        UserError,
        match=r"stage 'refine' needs about .* GiB of GPU memory .*\(refine.device = 'cuda'\) but "
        r"4.0 GiB is free on the GPU; set refine.cpu_offload = true, lower camera.resolution, "
        r'or use refine.device = "cpu"',
    ):
        resources.check(shot, Stage.REFINE, avail=64 * GIB, gpu_avail=4 * GIB)
    resources.check(shot, Stage.REFINE, avail=64 * GIB, gpu_avail=need)
    resources.check(shot_from_dict({"refine": {"device": "cpu"}}), Stage.REFINE, gpu_avail=1)

    offload = shot_from_dict({"refine": {"device": "cuda", "cpu_offload": True}})
    saved = resources.estimate_gpu(shot, Stage.REFINE) - resources.estimate_gpu(
        offload, Stage.REFINE
    )
    assert saved == resources.REFINE_PARAMS["sd15"][1] * resources.BYTES_PER_PARAM_GPU
    with pytest.raises(UserError, match=r"free on the GPU; lower camera.resolution"):
        resources.check(offload, Stage.REFINE, avail=64 * GIB, gpu_avail=GIB)


def test_gpu_estimate_follows_family_controlnets_and_resolution(tmp_path):
    from refine.testing import write_model_index_only

    def gpu(**refine):
        res = refine.pop("resolution", [1280, 720])
        s = shot_from_dict({"refine": refine, "camera": {"resolution": res}})
        return resources.estimate_gpu(s, Stage.REFINE)

    xl_folder = write_model_index_only(tmp_path / "xl", "StableDiffusionXLPipeline")
    sd_folder = write_model_index_only(tmp_path / "sd", "StableDiffusionPipeline")
    xl_repo = "stabilityai/stable-diffusion-xl-base-1.0"
    assert gpu(model=str(xl_folder)) == gpu(model=xl_repo) > gpu(model=str(sd_folder)) == gpu()
    one_net = [{"kind": "depth", "model": "lllyasviel/control_v11f1p_sd15_depth"}]
    cn = resources.REFINE_PARAMS["sd15"][2] * resources.BYTES_PER_PARAM_GPU
    assert gpu() - gpu(controlnets=one_net) == 2 * cn
    pixels = 2048 * 2048 - 1280 * 720
    assert gpu(resolution=[2048, 2048]) - gpu() == pixels * resources.PER_PIXEL_REFINE_GPU


def test_memory_limits_from_the_environment(monkeypatch):
    monkeypatch.setenv("DESTRUCT_MEMORY_LIMIT_MIB", "256")
    assert resources.available() == 256 * resources.MIB
    monkeypatch.setenv("DESTRUCT_GPU_MEMORY_LIMIT_MIB", "512")
    assert resources.gpu_available() <= 512 * resources.MIB
    for bad in ("lots", "-1", "0"):
        monkeypatch.setenv("DESTRUCT_MEMORY_LIMIT_MIB", bad)
        with pytest.raises(UserError, match="DESTRUCT_MEMORY_LIMIT_MIB=.*MiB"):
            resources.available()
    monkeypatch.delenv("DESTRUCT_MEMORY_LIMIT_MIB")
    monkeypatch.delenv("DESTRUCT_GPU_MEMORY_LIMIT_MIB")
    assert resources.available() > 0
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():  # no GPU and no cap: nothing to check, no error
        assert resources.gpu_available() is None


GUARD_SHOT = """
[shot]
name = "guard"
frames = 2
[building]
procedural = { floors = 1, bays_x = 1, bays_z = 1, bay = 3.0, story = 3.0, windows = false }
[fracture]
pieces = 8
[sim]
backend = "cuda"
"""


def _files(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize(
    "limit, refused, written",
    [
        ({"DESTRUCT_MEMORY_LIMIT_MIB": "100"}, "prepare", []),
        ({"DESTRUCT_GPU_MEMORY_LIMIT_MIB": "512"}, "simulate", ["prepare"]),
    ],
    ids=["host", "gpu"],
)
def test_run_refuses_before_the_stage_starts(
    write_shot, tmp_path, monkeypatch, limit, refused, written
):
    for var, mib in limit.items():
        monkeypatch.setenv(var, mib)
    out = tmp_path / "run"
    p = run_cli("run", write_shot(GUARD_SHOT), "--out", out, "--stages", "prepare,simulate")
    assert p.returncode == 2, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    gpu = "GPU memory" if refused == "simulate" else "memory"
    assert len(errors) == 1 and f"stage {refused!r} needs about" in errors[0], p.stderr
    assert f"of {gpu} for this shot" in errors[0] and "Traceback" not in p.stderr
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert sorted(stages) == written and all(stages[s]["status"] == "done" for s in written)
    folder = {"prepare": "fracture", "simulate": "sim"}[refused]
    assert _files(out / folder) == []

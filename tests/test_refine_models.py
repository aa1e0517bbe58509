"""Local-only weights: folders, the Hugging Face cache layout, refusals, pull and list."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")

import torch
from huggingface_hub import constants

from destruct.errors import UserError
from refine import models
from refine.models import MissingWeights, check_safetensors, list_models, pull, resolve
from refine.pipeline import (
    ControlKind,
    ControlSpec,
    Family,
    choose_device,
    detect_family,
    load_pipeline,
)
from refine.temporal import fresh_noise
from refine.testing import (
    install_in_hub_cache,
    save_tiny_set,
    synthetic_frames,
    write_model_index_only,
)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield save_tiny_set(tmp_path_factory.mktemp("tiny"), kinds=("depth",))
    torch.set_num_threads(threads)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """HF_HUB_CACHE pointed at an empty temp folder (as the variable would at startup)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _refine_once(rp):
    fr = synthetic_frames(1, 64, kinds=("depth",))[0]
    noise = torch.from_numpy(fresh_noise(rp.latent_shape(64, 64), 0, fr.frame))[None]
    return rp(fr.beauty, fr.controls, noise, prompt="a building", steps=2, strength=1.0).image


def test_a_repo_id_in_the_local_cache_loads_the_same_model_as_its_folder(tiny_set, hub_cache):
    snap = install_in_hub_cache(tiny_set["model"], hub_cache, "tiny-org/tiny-sd15")
    install_in_hub_cache(tiny_set["controlnets"][0]["model"], hub_cache, "tiny-org/tiny-depth")
    assert snap == hub_cache / "models--tiny-org--tiny-sd15" / "snapshots" / ("0" * 40)
    assert resolve("tiny-org/tiny-sd15") == snap

    by_id = load_pipeline(
        "tiny-org/tiny-sd15", [ControlSpec(ControlKind.DEPTH, "tiny-org/tiny-depth")], device="cpu"
    )
    by_folder = load_pipeline(
        tiny_set["model"],
        [ControlSpec(ControlKind.DEPTH, tiny_set["controlnets"][0]["model"])],
        device="cpu",
    )
    assert by_id.family is Family.SD15 and by_id.vae_scale_factor == 2
    assert by_id.pipe.tokenizer.model_max_length == 77
    a, b = _refine_once(by_id), _refine_once(by_folder)
    assert a.shape == (64, 64, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_missing_weights_name_the_exact_command(hub_cache):
    with pytest.raises(MissingWeights) as e:
        resolve("nobody/nothing")
    assert e.value.command == "destruct models pull nobody/nothing"
    with pytest.raises(MissingWeights) as e:
        load_pipeline(
            "stable-diffusion-v1-5/stable-diffusion-v1-5", [ControlSpec(ControlKind.DEPTH, "x/y")]
        )
    assert e.value.command == "destruct models pull sd15"
    with pytest.raises(UserError, match="does not exist"):
        resolve("./no/such/folder")


def test_pickled_weights_are_refused_with_a_message_to_convert(tmp_path):
    folder = write_model_index_only(tmp_path / "m", "StableDiffusionPipeline")
    (folder / "unet").mkdir()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UserError, match="convert them to safetensors"):
        check_safetensors(folder)
    with pytest.raises(UserError, match=r"\.bin.*safetensors"):
        load_pipeline(folder, [ControlSpec(ControlKind.DEPTH, str(folder))], device="cpu")
    ckpt = tmp_path / "v1-5-pruned.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(UserError, match=r"\.ckpt.*safetensors"):
        resolve(ckpt)
    # a .bin next to its safetensors twin (old repos ship both) is fine: only safetensors load
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    check_safetensors(folder)


def test_family_comes_from_model_index(tmp_path):
    assert (
        detect_family(write_model_index_only(tmp_path / "a", "StableDiffusionPipeline"))
        is Family.SD15
    )
    assert (
        detect_family(write_model_index_only(tmp_path / "b", "StableDiffusionXLPipeline"))
        is Family.SDXL
    )
    with pytest.raises(UserError, match="not SD 1.5 or SDXL"):
        detect_family(write_model_index_only(tmp_path / "c", "FluxPipeline"))
    with pytest.raises(UserError, match="model_index.json"):
        detect_family(tmp_path)


def test_device_choice():
    dev, dtype = choose_device("cpu")
    assert dev.type == "cpu" and dtype == torch.float32
    if not torch.cuda.is_available():
        assert choose_device("auto")[0].type == "cpu"
        with pytest.raises(UserError, match="no CUDA"):
            choose_device("cuda")
    with pytest.raises(UserError, match="auto, cpu or cuda"):
        choose_device("tpu")


def test_list_reports_what_the_cache_holds(tiny_set, hub_cache):
    install_in_hub_cache(
        tiny_set["controlnets"][0]["model"], hub_cache, "lllyasviel/control_v11f1p_sd15_depth"
    )
    rows = {r["repo"]: r for r in list_models()}
    assert rows["lllyasviel/control_v11f1p_sd15_depth"]["present"]
    assert rows["lllyasviel/control_v11f1p_sd15_depth"]["bytes"] > 0
    assert not rows["stable-diffusion-v1-5/stable-diffusion-v1-5"]["present"]
    assert {r["family"] for r in rows.values()} == {"sd15", "sdxl"}
    json.dumps(list(rows.values()))  # plain data for `destruct models list --json`


def test_pull_fetches_configs_and_safetensors_only(monkeypatch, tmp_path):
    calls = []

    def fake_snapshot_download(repo_id, **kw):
        calls.append((repo_id, kw))
        return str(tmp_path / repo_id)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    paths = pull("sd15", cache_dir=tmp_path)
    assert [c[0] for c in calls] == [s.repo for s in models.RECOMMENDED["sd15"]]
    assert len(paths) == 4
    for _, kw in calls:
        assert all(p.endswith((".safetensors", ".json", ".txt")) for p in kw["allow_patterns"])
        assert not any("fp16" in p or "safety_checker" in p for p in kw["allow_patterns"])
        assert {"*.bin", "*.ckpt", "*.pt", "*.pth"} <= set(kw["ignore_patterns"])
        assert kw["cache_dir"] == str(tmp_path)
    with pytest.raises(UserError, match="recommended set"):
        pull("not-a-set")


@pytest.mark.parametrize("failure", ["offline", "no such repo"])
def test_pull_without_the_hub_is_one_user_error(monkeypatch, tmp_path, failure):
    import httpx
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    def fake_snapshot_download(repo_id, **kw):
        if failure == "offline":
            raise LocalEntryNotFoundError(
                "Cannot find the requested files in the local cache.\nmore"
            )
        response = httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co"))
        raise RepositoryNotFoundError("404", response=response)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    match = "cannot download .*refine.model" if failure == "offline" else "has no repo 'org/none'"
    with pytest.raises(UserError, match=match):
        pull("sd15" if failure == "offline" else "org/none", cache_dir=tmp_path)

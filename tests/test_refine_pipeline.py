"""The refine pipeline on tiny random models (2 steps at 64x64, CPU), DESIGN.md section 8."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("diffusers")

import torch

from refine.metrics import warping_error
from refine.pipeline import ControlKind, ControlSpec, load_pipeline
from refine.temporal import (
    RefineSettings,
    TemporalSettings,
    fresh_noise,
    install_cross_frame,
    refine_sequence,
    refine_window,
)
from refine.testing import save_tiny_sdxl, save_tiny_set, save_tiny_union, synthetic_frames

SETTINGS = RefineSettings(
    prompt="a concrete building",
    negative_prompt="blurry",
    steps=2,
    strength=1.0,
    guidance=7.0,
    seed=3,
)
OFF = TemporalSettings(noise_warp=False, cross_frame=False, fusion=False, window=4, overlap=1)
ALL = TemporalSettings(window=4, overlap=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny convolutions: one thread is ~10x faster than two when the machine is shared
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load_tiny_set(root, kinds=("depth", "normal")):
    """The tiny SD 1.5 model with one tiny ControlNet per kind, through the real loading path."""
    spec = save_tiny_set(root, kinds=kinds)
    specs = [
        ControlSpec(ControlKind(c["kind"]), c["model"], c["scale"]) for c in spec["controlnets"]
    ]
    return load_pipeline(spec["model"], specs, device="cpu")


def _cross_frame_owners(nets) -> set[str]:
    """Which nets (``unet``, ``controlnet<i>``) hold a cross-frame attention processor."""
    return {
        p.name.split(".")[0]
        for net in nets
        for p in net.attn_processors.values()
        if hasattr(p, "name")
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    rp = _load_tiny_set(tmp_path_factory.mktemp("tiny_models"))
    return rp, install_cross_frame(rp.pipe)


@pytest.fixture(scope="module")
def frames():
    return synthetic_frames(6, 64, velocity=(2.0, 1.0))


def _images(out):
    return [out[f] for f in sorted(out)]


def test_same_seed_gives_identical_frames(tiny, frames):
    rp, state = tiny
    a = refine_sequence(rp, frames[:3], SETTINGS, ALL, state)
    b = refine_sequence(rp, frames[:3], SETTINGS, ALL, state)
    for f in a:
        np.testing.assert_array_equal(a[f], b[f])
    c = refine_sequence(rp, frames[:3], dataclasses.replace(SETTINGS, seed=4), ALL, state)
    assert np.abs(c[frames[0].frame] - a[frames[0].frame]).mean() > 1e-3


def test_without_temporal_methods_a_frame_control_reaches_only_that_frame(tiny, frames):
    rp, state = tiny
    base = refine_sequence(rp, frames[:5], SETTINGS, OFF, state)
    changed = list(frames[:5])
    f3 = changed[3]
    changed[3] = dataclasses.replace(f3, controls=[1.0 - f3.controls[0], f3.controls[1]])
    out = refine_sequence(rp, changed, SETTINGS, OFF, state)
    for k, fr in enumerate(frames[:5]):
        diff = np.abs(out[fr.frame] - base[fr.frame]).max()
        assert (diff > 1e-3) if k == 3 else (diff == 0.0), (k, diff)


def test_cross_frame_attention_keeps_the_anchor_and_changes_the_others(tiny, frames):
    rp, state = tiny
    plain = refine_window(rp, frames[:3], SETTINGS, OFF, state)
    xattn = refine_window(
        rp, frames[:3], SETTINGS, dataclasses.replace(OFF, cross_frame=True), state
    )
    np.testing.assert_array_equal(xattn[0], plain[0])
    for k in (1, 2):
        assert np.abs(xattn[k] - plain[k]).max() > 1e-4
    # it is installed in the UNet and in every ControlNet
    owners = _cross_frame_owners([rp.pipe.unet, *rp.pipe.controlnet.nets])
    assert owners == {"unet", "controlnet0", "controlnet1"}


def test_latents_are_the_noised_encoding_of_the_beauty(tiny, frames, monkeypatch):
    rp, _ = tiny
    fr = frames[0]
    noise = torch.from_numpy(fresh_noise(rp.latent_shape(64, 64), 0, fr.frame))[None]
    seen = {}
    real_call = type(rp.pipe).__call__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(type(rp.pipe), "__call__", spy)
    rp(fr.beauty, fr.controls, noise, prompt="x", steps=4, strength=0.5)
    t0 = rp.timesteps(4, 0.5)[0]
    expected = rp.pipe.scheduler.add_noise(rp.encode(fr.beauty), noise, torch.tensor([t0]))
    torch.testing.assert_close(seen["latents"], expected)
    assert t0 < 999  # strength 0.5 starts half way down the schedule
    for c in seen["control_image"]:  # float tensors straight from the passes (no 8-bit trip)
        assert c.dtype == torch.float32
    torch.testing.assert_close(
        seen["control_image"][0][0].permute(1, 2, 0), torch.from_numpy(fr.controls[0])
    )


def test_temporal_method_halves_the_warping_error_of_per_frame_refine(tiny, frames):
    rp, state = tiny
    mot, occ = [f.motion for f in frames], [f.occlusion for f in frames]
    coarse = warping_error([f.beauty for f in frames], mot, occ)
    per_frame = warping_error(_images(refine_sequence(rp, frames, SETTINGS, OFF, state)), mot, occ)
    temporal = warping_error(_images(refine_sequence(rp, frames, SETTINGS, ALL, state)), mot, occ)
    print(f"warping error: coarse {coarse:.5f} per-frame {per_frame:.5f} temporal {temporal:.5f}")
    assert coarse < 1e-4
    assert temporal <= 0.5 * per_frame


def test_windows_in_any_order_give_the_same_frames(tiny, frames):
    rp, state = tiny
    forward = refine_sequence(rp, frames, SETTINGS, ALL, state)  # windows (0..3), (3..5)
    backward = refine_sequence(rp, frames, SETTINGS, ALL, state, order=[1, 0])
    for f in forward:
        np.testing.assert_array_equal(forward[f], backward[f])
    # the seam frame is a cross-fade of both windows, the rest come from one window each
    first = refine_window(rp, frames[:4], SETTINGS, ALL, state)
    np.testing.assert_array_equal(forward[frames[0].frame], first[0])
    second = refine_window(rp, frames[3:], SETTINGS, ALL, state)
    np.testing.assert_allclose(
        forward[frames[3].frame], 0.5 * first[3] + 0.5 * second[0], atol=1e-6
    )


def test_sdxl_controlnet_union_family_loads_and_refines_with_the_temporal_methods(
    tmp_path, monkeypatch
):
    base, union = save_tiny_sdxl(tmp_path / "xl"), save_tiny_union(tmp_path / "union")
    specs = [
        ControlSpec(ControlKind.DEPTH, str(union)),
        ControlSpec(ControlKind.NORMAL, str(union), 0.5),
    ]
    rp = load_pipeline(base, specs, device="cpu")
    assert (
        rp.family.value == "sdxl"
        and type(rp.pipe).__name__ == "StableDiffusionXLControlNetUnionImg2ImgPipeline"
    )
    state = install_cross_frame(rp.pipe)
    assert _cross_frame_owners([rp.pipe.unet, rp.pipe.controlnet]) == {"unet", "controlnet0"}
    seen = {}
    real_call = type(rp.pipe).__call__
    monkeypatch.setattr(
        type(rp.pipe),
        "__call__",
        lambda self, *a, **kw: seen.update(kw) or real_call(self, *a, **kw),
    )
    frames = synthetic_frames(3, 64)
    plain = refine_window(rp, frames, SETTINGS, OFF, state)
    assert seen["control_mode"] == [1, 4]  # depth and normal in ControlNet-Union's numbering
    temporal = refine_window(rp, frames, SETTINGS, ALL, state)
    again = refine_window(rp, frames, SETTINGS, ALL, state)
    np.testing.assert_array_equal(temporal[0], plain[0])  # the anchor is the same frame
    assert np.abs(temporal[2] - plain[2]).max() > 1e-4
    for a, b in zip(temporal, again):
        np.testing.assert_array_equal(a, b)


def test_three_controlnets_each_steer_the_frame_and_all_attend_across_frames(tmp_path):
    """SD 1.5 with depth, normal and seg ControlNets at once: changing any one control image
    changes the frame, and cross-frame attention is installed in the UNet and in all three nets."""
    kinds = ("depth", "normal", "seg")
    rp = _load_tiny_set(tmp_path, kinds)
    assert [c.kind.value for c in rp.controls] == list(kinds) and len(rp.pipe.controlnet.nets) == 3
    state = install_cross_frame(rp.pipe)
    owners = _cross_frame_owners([rp.pipe.unet, *rp.pipe.controlnet.nets])
    assert owners == {"unet", "controlnet0", "controlnet1", "controlnet2"}
    frames = synthetic_frames(2, 64, kinds=kinds)
    (base,) = refine_window(rp, frames[:1], SETTINGS, OFF, state)
    for i in range(3):
        controls = list(frames[0].controls)
        controls[i] = 1.0 - controls[i]
        changed = dataclasses.replace(frames[0], controls=controls)
        (out,) = refine_window(rp, [changed], SETTINGS, OFF, state)
        assert np.abs(out - base).max() > 1e-3, kinds[i]
    # with all three nets attending to the anchor: the anchor is unchanged, the next frame is not
    plain = refine_window(rp, frames, SETTINGS, OFF, state)
    xattn = refine_window(rp, frames, SETTINGS, dataclasses.replace(OFF, cross_frame=True), state)
    np.testing.assert_array_equal(xattn[0], plain[0])
    assert np.abs(xattn[1] - plain[1]).max() > 1e-4


def test_timesteps_stay_inside_the_schedulers_table_and_name_the_fix(tiny):
    """As many steps as the scheduler's training timesteps at strength 1 (its offset would
    start past its noise table): every timestep indexes the table; strength x steps below 1
    is one user error naming both keys."""
    from destruct.errors import UserError

    rp, _ = tiny
    table = int(rp.pipe.scheduler.config.num_train_timesteps)
    ts = rp.timesteps(table, 1.0)
    assert len(ts) >= table - 1 and max(ts) < table
    with pytest.raises(UserError, match="raise refine.strength or refine.steps"):
        rp.timesteps(5, 0.001)


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    return save_tiny_set(tmp_path_factory.mktemp("tiny_broken"), kinds=("depth",))


BREAKS = {
    "unet config not JSON": lambda base, cn: (base / "unet" / "config.json").write_text("{oops"),
    "no scheduler": lambda base, cn: __import__("shutil").rmtree(base / "scheduler"),
    "unet weights cut short": lambda base, cn: _cut(next((base / "unet").glob("*.safetensors"))),
    "controlnet is a unet": lambda base, cn: None,
    "custom component class": lambda base, cn: _custom_unet(base),
}


def _cut(path):
    path.write_bytes(path.read_bytes()[:5000])


def _custom_unet(base):
    import json

    index = json.loads((base / "model_index.json").read_text())
    index["unet"] = ["my_unet", "MyUNet"]
    (base / "model_index.json").write_text(json.dumps(index))
    (base / "unet" / "my_unet.py").write_text("open('/tmp/destruct_ran_custom_code', 'w')\n")


@pytest.mark.parametrize("damage", BREAKS)
def test_a_model_folder_that_does_not_load_is_one_user_error(tiny_folders, tmp_path, damage):
    """Broken or wrong model folders (as a download cut short or a hand-assembled folder
    leaves them): one UserError naming the folder and the fix, no custom code run, never
    advice to allow remote code."""
    import shutil
    from pathlib import Path

    from destruct.errors import UserError

    base = tmp_path / "base"
    shutil.copytree(tiny_folders["model"], base)
    cn = Path(tiny_folders["controlnets"][0]["model"])
    BREAKS[damage](base, cn)
    net = base / "unet" if damage == "controlnet is a unet" else cn
    with pytest.raises(UserError, match="does not load as a") as e:
        load_pipeline(str(base), [ControlSpec(ControlKind.DEPTH, str(net), 1.0)], device="cpu")
    assert "trust_remote_code" not in str(e.value) and len(str(e.value).splitlines()) == 1
    assert not Path("/tmp/destruct_ran_custom_code").exists()

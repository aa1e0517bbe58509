"""The shot schema: defaults, cross-field checks, one clear line per problem, path resolution."""

from __future__ import annotations

import math

import pytest
from conftest import run_cli

import destruct
from destruct.errors import UserError
from destruct.shot import shot_from_dict


def test_defaults_fill_every_section():
    s = shot_from_dict({})
    assert s.shot.fps == 24 and s.shot.frames == 120 and s.shot.start_frame == 1001
    assert s.building.procedural is not None and s.building.procedural.floors == 6
    assert s.render.passes == ["beauty", "depth", "normal", "id", "seg", "motion", "occlusion"]
    assert s.frame_numbers()[0] == 1001 and s.frame_numbers()[-1] == 1120
    assert math.isclose(s.duration, 5.0)


def test_default_shot_is_valid_and_as_briefed():
    s = destruct.load_shot(destruct.default_shot_path())
    assert s.shot.frames == 120 and s.shot.fps == 24
    assert s.building.procedural.floors == 6 and 600 <= s.fracture.pieces <= 1000
    assert len(s.charges) == 2 and all(
        c.position[1] < s.building.procedural.story for c in s.charges
    )
    assert s.refine.enabled


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"shot": {"frames": 10, "bogus": 1}}, "unknown key 'bogus' in [shot]; allowed: name, fps"),
        ({"shot": {"frames": -5}}, "shot.frames = -5"),
        (
            {"fracture": {"pieces": "many"}},
            "fracture.pieces = 'many': input should be a valid integer",
        ),
        ({"fracture": {"pieces": "800"}}, "fracture.pieces = '800'"),
        (
            {"sim": {"gravity": [0, float("nan"), 0]}},
            "sim.gravity[1] = nan: input should be a finite number",
        ),
        ({"camera": {"resolution": [1281, 720]}}, "multiple of 8"),
        (
            {"camera": {"position": [1, 2, 3], "look_at": [1, 2, 3]}},
            "must differ from its position",
        ),
        (
            {"charges": [{"time": 99, "position": [0, 0, 0], "radius": 1, "impulse": 10}]},
            "charges[0].time = 99",
        ),
        ({"render": {"passes": ["beauty", "xray"]}}, "render.passes[1] = 'xray'"),
        (
            {"building": {"material": "cheese"}},
            "building.material = 'cheese' is not a known material",
        ),
        ({"regions": [{"min": [0, 0, 0], "max": [1, -1, 1], "weaken": 0.5}]}, "must be below max"),
        (
            {"refine": {"temporal": {"window": 4, "overlap": 4}}},
            "overlap (4) must be below window (4)",
        ),
        ({"materials": {"jelly": {"density": 1000.0}}}, "give it a base preset"),
        ({"sim": {"backend": "metal"}}, "sim.backend = 'metal'"),
    ],
)
def test_bad_values_give_one_clear_line(data, needle):
    with pytest.raises(UserError) as e:
        shot_from_dict(data, source="s.toml")
    assert needle in str(e.value)
    assert all(line.startswith("s.toml: ") for line in str(e.value).splitlines())


def test_mesh_path_resolves_against_shot_folder(tmp_path, write_shot):
    (tmp_path / "geo").mkdir()
    (tmp_path / "geo" / "tower.obj").write_text("v 0 0 0\n")
    s = destruct.load_shot(write_shot('[building]\nmesh = "geo/tower.obj"\n'))
    assert s.building.mesh == str((tmp_path / "geo" / "tower.obj").resolve())


@pytest.mark.parametrize(
    "mesh, needle",
    [
        ("missing.glb", "no such file"),
        ("geo", "is a folder"),
        ("geo/tower.txt", "unsupported type"),
    ],
)
def test_bad_mesh_paths(tmp_path, write_shot, mesh, needle):
    (tmp_path / "geo").mkdir()
    (tmp_path / "geo" / "tower.txt").write_text("x")
    with pytest.raises(UserError, match=needle):
        destruct.load_shot(write_shot(f'[building]\nmesh = "{mesh}"\n'))


def test_symlink_loop_is_a_clear_error(tmp_path, write_shot):
    (tmp_path / "a.glb").symlink_to(tmp_path / "b.glb")
    (tmp_path / "b.glb").symlink_to(tmp_path / "a.glb")
    with pytest.raises(UserError, match="building.mesh"):
        destruct.load_shot(write_shot('[building]\nmesh = "a.glb"\n'))


def test_resolved_shot_round_trips_through_toml(tmp_path):
    s = destruct.load_shot(destruct.default_shot_path())
    p = tmp_path / "resolved.toml"
    p.write_text(s.to_toml())
    assert destruct.load_shot(p).hash() == s.hash()


@pytest.mark.parametrize(
    "text, needle",
    [
        (
            "[shot]\nframes = 10\ncolour = 1\n",
            "unknown key 'colour' in [shot]; allowed: name, fps, frames, start_frame, seed",
        ),
        ("[shot]\nframes = -3\n", "shot.frames = -3: input should be greater than or equal to 1"),
        ('[shot]\nfps = "fast"\n', "shot.fps = 'fast': input should be a valid number"),
        ("[camera]\nfocal_mm = nan\n", "camera.focal_mm = nan: input should be a finite number"),
        (
            '[building]\nmesh = "nowhere.glb"\n',
            "building.mesh = 'nowhere.glb': no such file",  # and: paths are relative to the shot
        ),
        ("[shot\nname=", "not valid TOML"),
    ],
)
def test_cli_validate_bad_shot_exits_2_without_traceback(write_shot, text, needle):
    """One line naming the key, the value and what is allowed; exit 2; no traceback."""
    r = run_cli("validate", write_shot(text))
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_cli_validate_default_shot():
    r = run_cli("validate", destruct.default_shot_path())
    assert r.returncode == 0 and r.stdout.startswith("ok: ")


def test_a_byte_order_mark_is_read_as_utf8(tmp_path):
    """Windows editors start a UTF-8 file with a byte-order mark; the shot reads the same."""
    from destruct.shot import load_shot

    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b'[shot]\nname = "bom"\nframes = 12\n')
    shot = load_shot(path)
    assert shot.shot.name == "bom" and shot.shot.frames == 12


def test_at_most_1000_charges():
    """A list of charges has a limit (5000 charges made prepare run for minutes)."""
    charge = {"time": 0.1, "position": [0.0, 1.0, 0.0], "radius": 1.0, "impulse": 10.0}
    with pytest.raises(UserError, match="charges = list: list should have at most 1000 items"):
        shot_from_dict({"charges": [charge] * 1001})
    assert len(shot_from_dict({"charges": [charge] * 3}).charges) == 3


@pytest.mark.parametrize("name", ["model.ckpt", "model.safetensors"])
def test_a_model_that_is_a_file_says_a_folder_is_needed(tmp_path, name):
    (tmp_path / name).write_bytes(b"weights")
    with pytest.raises(UserError, match="weights file; give a diffusers model folder") as e:
        shot_from_dict({"refine": {"model": f"./{name}"}}, base_dir=tmp_path)
    assert ("pickled weights are refused" in str(e.value)) == name.endswith(".ckpt")

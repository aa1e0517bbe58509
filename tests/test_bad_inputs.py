"""The bad-input corpus (tests/bad_inputs/): every case gets one clear line and exit code 2.

Each ``<case>.toml`` starts with ``# stage: validate|prepare`` (which command runs it) and
``# expect: <text>`` (a substring of the one error line). The CLI runs in-process through
``destruct.cli.main``: an unexpected exception would escape as a traceback and fail the test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from destruct.cli import main

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
CASES = sorted(CORPUS.glob("*.toml"))


def _header(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("# ") and ":" in line:
            k, v = line[2:].split(":", 1)
            out[k.strip()] = v.strip()
    return out


def _expect_one_clear_line(capsys, argv, expect):
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expect in lines[0], err
    assert "Traceback" not in err


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_bad_input(case, capsys, tmp_path):
    h = _header(case)
    if h["stage"] == "validate":
        argv = ["validate", str(case)]
    else:
        argv = ["run", str(case), "--stages", "prepare", "--out", str(tmp_path / "run"), "--quiet"]
    _expect_one_clear_line(capsys, argv, h["expect"])


def test_symlink_loop_mesh(tmp_path, capsys):
    (tmp_path / "a.glb").symlink_to(tmp_path / "b.glb")
    (tmp_path / "b.glb").symlink_to(tmp_path / "a.glb")
    (tmp_path / "s.toml").write_text('[building]\nmesh = "a.glb"\n')
    _expect_one_clear_line(
        capsys, ["validate", str(tmp_path / "s.toml")], "building.mesh = 'a.glb'"
    )


def test_foreign_output_folder_is_never_written(tmp_path, capsys):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    _expect_one_clear_line(
        capsys, ["run", "--out", str(out), "--quiet"], "holds no destruct manifest"
    )
    assert os.listdir(out) == ["holiday.jpg"]


def test_bad_flags(tmp_path, capsys):
    _expect_one_clear_line(
        capsys, ["run", "--stages", "prepare,xray", "--out", str(tmp_path)], "unknown stage xray"
    )
    _expect_one_clear_line(
        capsys, ["run", "--frames", "5:1", "--out", str(tmp_path)], "--frames '5:1'"
    )
    _expect_one_clear_line(
        capsys, ["run", "--backend", "metal", "--out", str(tmp_path)], "--backend 'metal'"
    )
    _expect_one_clear_line(capsys, ["validate", str(tmp_path / "missing.toml")], "does not exist")


def test_a_non_manifold_edge_is_two_solids_not_an_error(tmp_path, capsys):
    """Two cubes sharing one edge (a non-manifold edge) import as two exact parts."""
    import json

    shot = tmp_path / "s.toml"
    shot.write_text(
        f'[building]\nmesh = "{CORPUS / "meshes" / "nonmanifold_edge.obj"}"\n[fracture]\npieces = 4\n'
    )
    assert (
        main(["run", str(shot), "--stages", "prepare", "--out", str(tmp_path / "run"), "--quiet"])
        == 0
    )
    info = json.loads((tmp_path / "run" / "fracture" / "fracture.json").read_text())
    assert info["repair"]["parts"] == 2 and abs(info["input_volume"] - 2.0) < 1e-9
    assert info["volume_error"] < 1e-6

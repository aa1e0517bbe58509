"""A full disk or a read-only output folder: one clear error, nothing already written corrupted.

Uses a real tiny tmpfs (root only: CI and the dev machines run as root; elsewhere skipped)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_pipeline import small

from destruct import stages as stage_registry
from destruct.errors import UserError
from destruct.io import TMP_PREFIX, save_npz
from destruct.pipeline import run
from destruct.stages import Stage


def big_simulate(ctx):
    """Writes far more than the tiny disk holds."""
    for f in ctx.frames:
        save_npz(
            ctx.path("sim", f"frame.{f:04d}.npz"), "destruct.sim/1", y=np.ones(200_000, np.float64)
        )
    return {}


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".manifest.lock")
    }


def test_full_disk_is_a_clear_error_and_keeps_what_was_written(tiny_disk, monkeypatch):
    import test_pipeline

    monkeypatch.setattr(
        stage_registry,
        "ENTRY_POINTS",
        {
            Stage.PREPARE: "test_pipeline:fake_prepare",
            Stage.SIMULATE: "test_disk:big_simulate",
            Stage.RENDER: "test_pipeline:fake_render",
            Stage.REFINE: "test_pipeline:fake_refine",
            Stage.ENCODE: "test_pipeline:fake_encode",
        },
    )
    assert test_pipeline
    out = tiny_disk / "run"
    run(small(), out, "prepare")
    before = _digest(out)
    with pytest.raises(
        UserError, match="disk full while writing .*frame.000.\\.npz: free some space"
    ):
        run(small(), out, "simulate")
    after = _digest(out)
    for name in ("fracture/pieces.npz", "shot.toml"):
        assert after[name] == before[name]
    m = json.loads((out / "manifest.json").read_text())
    assert (
        m["stages"]["prepare"]["status"] == "done" and m["stages"]["simulate"]["status"] == "failed"
    )
    assert not [p for p in out.rglob(TMP_PREFIX + "*")]


def test_read_only_output_is_a_clear_error(tiny_disk, monkeypatch):
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    with pytest.raises(
        UserError,
        match="cannot create the run folder .*Read-only file system; choose a writable --out folder",
    ):
        run(small(), tiny_disk / "run", "prepare")

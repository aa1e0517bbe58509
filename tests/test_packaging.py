"""The wheel carries every module, the bundled shot and the render shaders (a non-editable
install must find ``assets/`` and ``destruct/render/shaders/``)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_holds_code_assets_and_shaders(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("destruct-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in ("destruct", "sim_kernels", "refine"):
        for py in (REPO / pkg).rglob("*.py"):
            assert str(py.relative_to(REPO)) in names, py
    assert "destruct/assets/shots/default.toml" in names
    for shader in (REPO / "destruct" / "render" / "shaders").iterdir():
        assert f"destruct/render/shaders/{shader.name}" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)

"""Shared test helpers: running the CLI in a subprocess and writing small shot files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
REPO = Path(__file__).resolve().parents[1]


def run_cli(
    *args: str, cwd: str | Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """``destruct ARGS`` in a fresh interpreter; returns the completed process (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "destruct.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def write_shot(tmp_path):
    """Write a shot TOML text into tmp_path and return its path."""

    def _write(text: str, name: str = "shot.toml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p

    return _write


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster (2 CPUs) shared by the whole test session."""
    pytest.importorskip("ray")
    from destruct.raycluster import connect

    ray = connect("local", num_cpus=2)
    yield ray
    ray.shutdown()


def pytest_sessionfinish(session, exitstatus):
    """Free manifold3d objects still referenced by finished tests before the interpreter exits,
    so nanobind does not print leak warnings after pytest's summary line."""
    import gc

    gc.collect()

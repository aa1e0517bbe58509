"""Crash and resume, and determinism, end to end on a tiny shot with tiny diffusion models.

An uninterrupted run is the reference. A second clean run must give identical files (determinism:
caches, passes and refined frames, bit for bit on the CPU). A third run is killed with SIGKILL at
random moments (in simulate, render and refine) at least 10 times, then run to the end: every
file under fracture/, sim/, passes/ and refine/ must equal the reference, and no temporary file
may remain.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from destruct.io import TMP_PREFIX

ARTIFACTS = ("fracture", "sim", "passes", "refine")
SHOT = """
[shot]
name = "tiny"
frames = 8
start_frame = 1
seed = 3
[building]
procedural = {{ floors = 2, bays_x = 1, bays_z = 1, bay = 3.0, story = 3.0, windows = false }}
[fracture]
pieces = 24
[[charges]]
time = 0.05
position = [0.0, 1.0, 0.0]
radius = 1.5
impulse = 2000.0
[sim]
backend = "cpu"
threads = 1
preroll = 0.1
checkpoint_every = 2
[debris]
max_particles = 2000
[camera]
position = [9.0, 5.0, 12.0]
look_at = [1.5, 2.5, 1.5]
resolution = [64, 48]
[refine]
model = "{model}"
controlnets = {controlnets}
steps = 2
strength = 0.5
temporal = {{ window = 4, overlap = 1 }}
"""


@pytest.fixture(scope="module")
def shot_file(tmp_path_factory):
    from refine.testing import save_tiny_set

    root = tmp_path_factory.mktemp("crash")
    tiny = save_tiny_set(root / "models", kinds=("depth", "normal"))
    nets = (
        "["
        + ", ".join(
            f'{{ kind = "{c["kind"]}", model = "{c["model"]}", scale = 1.0 }}'
            for c in tiny["controlnets"]
        )
        + "]"
    )
    p = root / "tiny.toml"
    p.write_text(SHOT.format(model=tiny["model"], controlnets=nets))
    return p


def _run(shot: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYOPENGL_PLATFORM": "egl"}
    return subprocess.Popen(
        [sys.executable, "-m", "destruct.cli", "run", str(shot), "--out", str(out), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(shot: Path, out: Path) -> None:
    p = _run(shot, out)
    _, err = p.communicate(timeout=1200)
    assert p.returncode == 0, err


def digest(run_dir: Path) -> dict[str, str]:
    """sha256 of every artifact file under the four artifact folders."""
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in ARTIFACTS
        for p in sorted((run_dir / folder).rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def reference(shot_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    t0 = time.perf_counter()
    _finish(shot_file, out)
    return out, time.perf_counter() - t0


@pytest.mark.slow
def test_same_shot_twice_gives_identical_files(shot_file, reference, tmp_path):
    ref, _ = reference
    _finish(shot_file, tmp_path / "again")
    a, b = digest(ref), digest(tmp_path / "again")
    assert set(a) == set(b)
    assert any(k.startswith("refine/") for k in a), "refine produced no frames"
    assert {k for k in a if a[k] != b[k]} == set()


@pytest.mark.slow
def test_killed_runs_resume_to_identical_files(shot_file, reference, tmp_path):
    ref, seconds = reference
    rng = random.Random(11)
    kills, folders = 0, []
    while kills < 10:
        out = tmp_path / f"killed{len(folders)}"
        folders.append(out)
        while kills < 10:
            p = _run(shot_file, out)
            time.sleep(rng.uniform(1.0, max(1.5, seconds * 0.6)))
            if p.poll() is not None:  # it finished first: check this folder, continue in a new one
                assert p.returncode == 0, p.stderr.read()
                break
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
    ref_digest = digest(ref)
    for out in folders:
        _finish(shot_file, out)
        d = digest(out)
        assert set(d) == set(ref_digest)
        assert {k for k in d if d[k] != ref_digest[k]} == set()
        assert not [p for p in out.rglob(TMP_PREFIX + "*")]

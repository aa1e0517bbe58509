"""Crash and resume, and determinism, end to end on a tiny shot with tiny diffusion models.

An uninterrupted run is the reference. A second clean run must give identical files (determinism:
caches, passes and refined frames, bit for bit on the CPU). A third run is killed with SIGKILL at
moments aimed at simulate, render and refine (at least 2 kills landing in each, 10 in all), then
run to the end: every file under fracture/, sim/, passes/ and refine/ must equal the reference,
and no temporary file may remain.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
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


def _run(shot: Path, out: Path, *, quiet: bool = True) -> subprocess.Popen:
    env = {**os.environ, "PYOPENGL_PLATFORM": "egl"}
    return subprocess.Popen(
        [sys.executable, "-m", "destruct.cli", "run", str(shot), "--out", str(out)]
        + (["--quiet"] if quiet else []),
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


def _stages(run_dir: Path) -> dict[str, dict]:
    p = run_dir / "manifest.json"
    return json.loads(p.read_text()).get("stages", {}) if p.exists() else {}


def _frames_done(run_dir: Path, stage: str) -> int:
    return len(_stages(run_dir).get(stage, {}).get("frames_done", []))


class _Stages:
    """The stage lines (``render: running``, ``render: done in 1.4 s``) a run prints on stderr,
    read by a thread as they come."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.strip())

    def started(self) -> str | None:
        """The stage this process started last, unless it has finished it."""
        for line in reversed(self.lines):
            name, _, state = line.partition(": ")
            if name in STAGES:
                return name if state == "running" else None
        return None

    def wait_for(self, stage: str, timeout: float = 600) -> bool:
        """True once ``stage`` is running in this process; False when the process ended first."""
        t0 = time.monotonic()
        while self.proc.poll() is None and time.monotonic() - t0 < timeout:
            if f"{stage}: running" in self.lines:
                return True
            time.sleep(0.01)
        return False

    def close(self) -> str:
        self._thread.join(timeout=10)
        return "\n".join(self.lines)


STAGES = ("prepare", "simulate", "render", "refine", "encode")
KILL_STAGES = ("simulate", "render", "refine")
#: Stages aimed at by their progress: the files they write one by one. A kill lands after 0 to 2
#: more of them appear (plus up to 50 ms). Their reference times are no guide: the reference
#: run also compiled the Taichi and numba kernels, which later runs load from their caches.
PROGRESS = {"simulate": "sim/frame.*.npz", "render": "passes/*.exr"}
#: kills aimed at each stage per run folder (a stage that finished takes no more kills there)
PER_FOLDER = {"simulate": 2, "render": 2, "refine": 3}


def _count(out: Path, pattern: str) -> int:
    return len(list(out.glob(pattern)))


@pytest.mark.slow
def test_killed_runs_resume_to_identical_files(shot_file, reference, tmp_path):
    """Each kill is aimed at a stage: once that stage's ``running`` line appears, the run is
    killed after 0 to 2 more of its files appear (simulate, render: see ``PROGRESS``) or after
    a random share (10 to 50 %) of the reference run's time for the stage (refine). The stage
    it hit is the one the process last started and, by the manifest frozen after the kill, had not
    finished; a kill that missed (the stage ended first) is counted as "between stages"."""
    ref, _ = reference
    ref_seconds = {s: _stages(ref)[s]["seconds"] for s in KILL_STAGES if s not in PROGRESS}
    rng = random.Random(11)
    hits: list[str] = []
    details: list[str] = []
    folders: list[Path] = []

    def enough() -> bool:
        return len(hits) >= 10 and all(hits.count(s) >= 2 for s in KILL_STAGES)

    while not enough():
        assert len(folders) < 4, f"kills did not land where aimed: {hits}"
        out = tmp_path / f"killed{len(folders)}"
        folders.append(out)
        aimed = dict.fromkeys(KILL_STAGES, 0)
        while not enough():
            done = {k for k, e in _stages(out).items() if e.get("status") == "done"}
            todo = [s for s in KILL_STAGES if s not in done and aimed[s] < PER_FOLDER[s]]
            if not todo:
                break
            target = todo[0]
            p = _run(shot_file, out, quiet=False)
            lines = _Stages(p)
            if not lines.wait_for(target):  # it ended first: check this folder, go on in a new one
                if p.poll() is None:
                    p.kill()
                    pytest.fail(f"{target} did not start within 600 s: {lines.close()}")
                assert p.returncode == 0, lines.close()
                break
            if target in PROGRESS:
                goal = _count(out, PROGRESS[target]) + rng.randint(0, 2)
                while (
                    p.poll() is None
                    and lines.started() == target
                    and _count(out, PROGRESS[target]) < goal
                ):
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, 0.05))
            else:  # refine writes its frames once all windows are done: aim by its time
                time.sleep(rng.uniform(0.1, 0.5) * ref_seconds[target])
            p.send_signal(signal.SIGKILL)
            p.wait()
            lines.close()
            aimed[target] += 1
            hit, frozen = lines.started(), _stages(out)
            if hit is None or frozen.get(hit, {}).get("status") == "done":
                hit = "between stages"
            hits.append(hit)
            frames = _frames_done(out, hit)
            details.append(f"{hit}" + (f" ({frames} frames done)" if frames else ""))
    print(f"{len(hits)} kills in {len(folders)} run folders: {dict(Counter(hits))}: {details}")
    assert len(hits) >= 10
    assert all(hits.count(s) >= 2 for s in KILL_STAGES), hits

    ref_digest = digest(ref)
    for out in folders:
        _finish(shot_file, out)
        d = digest(out)
        assert set(d) == set(ref_digest)
        assert {k for k in d if d[k] != ref_digest[k]} == set()
        assert not [p for p in out.rglob(TMP_PREFIX + "*")]

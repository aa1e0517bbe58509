"""scaling: time per step and peak memory of the rigid solver (250-16000 pieces) and of the
debris particles (10k-1M), with the fitted log-log exponent of each series (goal: close to 1).

Rigid (``scaling_rigid``): a pile of irregular convex pieces (0.5 m boxes with jittered
corners, 10-14 hull faces) in columns of four on the ground, 2 mm apart, with a small random
spin: every piece has a contact below it and the uneven faces keep the stacks rocking, so all
pieces stay awake through the timed frames (a body sleeps after 0.5 s calm). One frame step at
24 fps with 8 substeps; the first step of each world (upload, first contacts, pair tables) is
not timed, nor the warm-up world that compiles the kernels (or loads them from Taichi's cache).

Particles (``scaling_rubble``, ``scaling_dust``): ``DebrisSystem.emit_breaks`` sources of 100
bits each, 1-9 m above the ground over a square whose area grows with the count (a constant
density: the same work per particle at every size), then frame steps at 24 fps (8 rubble
substeps; dust has one exact update per frame) while the bits fall and land.

Each size record: ``seconds_per_step`` (median over the timed frames), ``peak_memory_mb`` (the
rise of the process's peak resident memory over building and stepping the case: the kernel
Linux peak counter is reset before the case via /proc/self/clear_refs), ``device_mb`` (the
bytes of the Taichi ndarrays the World / DebrisSystem holds: shapes x dtype sizes) and the
load average (2 cores shared with other work: the timings are noisy). Each series ends with a
record of the fitted exponents of time and memory against size.

    python -m benchmarks --only scaling [--quick]
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np

SIZES = (250, 500, 1000, 2000, 4000, 8000, 16000)
QUICK_SIZES = (250, 500, 1000, 2000)
PARTICLES = (10_000, 30_000, 100_000, 300_000, 1_000_000)
QUICK_PARTICLES = (10_000, 30_000, 100_000)
FPS, SUBSTEPS = 24, 8
STACK = 4  # pieces per column of the pile
H = 0.25  # half size of a piece [m]
PER_SOURCE = 100  # rubble bits per emission source
DENSITY = 1e6 / 60.0**2  # particles per m^2 of ground (bench_debris: 1M over 60 m x 60 m)


# ---- helpers (tested in tests/test_bench_scaling.py) -------------------------------------------


def fit_exponent(sizes: Sequence[float], values: Sequence[float]) -> float:
    """Slope k of the least-squares line log(value) = k log(size) + c (value ~ size^k)."""
    x = np.log(np.asarray(sizes, dtype=np.float64))
    y = np.log(np.asarray(values, dtype=np.float64))
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError(f"an exponent needs two or more distinct sizes, got {list(sizes)}")
    return float(np.polyfit(x, y, 1)[0])


def ndarray_bytes(a) -> int:
    """Bytes of one Taichi scalar ndarray: product of its shape x its dtype's size."""
    from taichi.lang.util import to_numpy_type

    return int(np.prod(a.shape)) * np.dtype(to_numpy_type(a.dtype)).itemsize


def device_bytes(obj) -> int:
    """Bytes of the Taichi ndarrays an object holds: its attributes and the values of its
    dict attributes (World keeps its device tables in ``_dev``), each array counted once."""
    from taichi.lang._ndarray import Ndarray

    seen: dict[int, int] = {}
    for v in vars(obj).values():
        for a in v.values() if isinstance(v, dict) else (v,):
            if isinstance(a, Ndarray):
                seen[id(a)] = ndarray_bytes(a)
    return sum(seen.values())


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


@contextmanager
def peak_memory() -> Iterator[SimpleNamespace]:
    """Rise of this process's peak resident memory over a ``with`` block: ``.mb`` [MB].

    Entering records the resident size and resets the kernel's peak counter (``VmHWM``) by
    writing 5 to /proc/self/clear_refs (Linux >= 4.0); leaving reads the peak. Where the reset
    is refused, the peak is the resident size at the end of the block (a lower bound).
    """
    gc.collect()
    out = SimpleNamespace(mb=0.0)
    base = _status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        field = "VmHWM"
    except OSError:
        field = "VmRSS"
    yield out
    out.mb = max(_status_kb(field) - base, 0) / 1024.0


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _time_steps(step: Callable[[], None], frames: int) -> float:
    """Median wall seconds of ``frames`` calls of step (after one untimed call)."""
    step()
    times = []
    for _ in range(frames):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def fit_record(series: str, records: list[dict], size_key: str) -> dict:
    """The summary record of one series: exponents of time and memory against size."""
    sizes = [r[size_key] for r in records]
    return {
        "name": f"{series}_fit",
        "sizes": f"{min(sizes)}-{max(sizes)}",
        "exponent": round(fit_exponent(sizes, [r["seconds_per_step"] for r in records]), 3),
        "memory_exponent": round(fit_exponent(sizes, [r["device_mb"] for r in records]), 3),
        "load_average": float(_load()),
    }


# ---- rigid pile ---------------------------------------------------------------------------------


def piece_shapes(count: int = 32, seed: int = 0) -> list[np.ndarray]:
    """``count`` convex pieces (8, 3): 0.5 m boxes with corners moved by up to 3 cm across and
    1 cm up or down, so their faces are slightly uneven (a stack of them rocks)."""
    rng = np.random.default_rng(seed)
    box = np.array([[x, y, z] for x in (-H, H) for y in (-H, H) for z in (-H, H)])
    jitter = rng.uniform(-1, 1, (count, 8, 3)) * np.array([0.03, 0.01, 0.03])
    return list(box + jitter)


def pile_world(n: int, seed: int = 0):
    """A World of n pieces in columns of STACK on the ground, columns 0.6 m apart on a square
    grid, pieces 2 mm above the one below, each with a small random spin (0.3 rad/s)."""
    from destruct.world import World

    w = World(backend="cpu")
    shapes = piece_shapes(seed=seed)
    rng = np.random.default_rng(seed)
    side = max(1, math.ceil(math.sqrt(n / STACK)))
    for i in range(n):
        col, level = divmod(i, STACK)
        x, z = divmod(col, side)
        w.add_body(
            shapes[i % len(shapes)],
            density=2400.0,
            position=(0.6 * x, H + 0.012 + level * (2 * H + 0.022), 0.6 * z),
            angular_velocity=rng.normal(0, 0.3, 3),
            friction=0.6,
        )
    return w


def rigid_case(n: int) -> dict:
    """Build a pile of n pieces, step it, measure time per frame step and memory."""
    frames = 4 if n <= 2000 else 3
    with peak_memory() as mem:
        w = pile_world(n)
        per_step = _time_steps(lambda: w.step(1 / FPS, SUBSTEPS), frames)
        dev = device_bytes(w)
    rec = {
        "name": "scaling_rigid",
        "pieces": n,
        "seconds_per_step": per_step,
        "per_piece_us": 1e6 * per_step / n,
        "peak_memory_mb": mem.mb,
        "device_mb": dev / 2**20,
        "pairs_per_piece": w.last_pairs / n,
        "awake_share": float((~w.sleeping()).mean()),
        "substeps": SUBSTEPS,
        "frames_timed": frames,
        "load_average": float(_load()),
    }
    return rec


# ---- particles ----------------------------------------------------------------------------------


def particle_system(kind: str, n: int, seed: int = 0):
    """A DebrisSystem holding about n rubble bits (kind "rubble") or dust particles ("dust"),
    emitted over a square of DENSITY particles per m^2, 1-9 m up."""
    from destruct.debris import DUST_PER_BIT, DebrisSystem

    m = max(1, n // PER_SOURCE)
    half = 0.5 * math.sqrt(n / DENSITY)
    rng = np.random.default_rng(seed)
    pts = np.column_stack(
        [rng.uniform(-half, half, m), rng.uniform(1, 9, m), rng.uniform(-half, half, m)]
    )
    if kind == "rubble":
        d = DebrisSystem(seed=seed, max_rubble=n, max_dust=1, dust=False)
        per_break = float(PER_SOURCE)
    else:
        d = DebrisSystem(seed=seed, max_rubble=0, max_dust=n)
        per_break = PER_SOURCE / DUST_PER_BIT
    # unit areas at the reference energy G_REF: per_break bits expected per source
    zeros = np.zeros((m, 3))
    d.emit_breaks(
        pts,
        np.tile([0.0, 1.0, 0.0], (m, 1)),
        np.ones(m),
        np.full(m, 100.0),
        zeros,
        zeros,
        np.zeros(m, int),
        per_break,
        time=0.0,
    )
    return d


def particle_case(kind: str, n: int) -> dict:
    frames = 4 if n <= 100_000 else 3
    substeps = SUBSTEPS if kind == "rubble" else 1
    with peak_memory() as mem:
        d = particle_system(kind, n)
        per_step = _time_steps(lambda: d.step(1 / FPS, substeps), frames)
        dev = device_bytes(d)
    live = d.live_rubble if kind == "rubble" else d.live_dust
    rec = {
        "name": f"scaling_{kind}",
        "particles": int(live),
        "seconds_per_step": per_step,
        "per_particle_ns": 1e9 * per_step / live,
        "peak_memory_mb": mem.mb,
        "device_mb": dev / 2**20,
        "substeps": substeps,
        "frames_timed": frames,
        "load_average": float(_load()),
    }
    return rec


def _warm_up() -> None:
    """Compile (or load from Taichi's offline cache) every kernel outside the timings."""
    w = pile_world(8)
    for _ in range(2):
        w.step(1 / FPS, SUBSTEPS)
    for kind in ("rubble", "dust"):
        particle_system(kind, 200).step(1 / FPS, SUBSTEPS)


def run(quick: bool = False) -> list[dict]:
    from sim_kernels.backend import init

    init("cpu", 0)
    _warm_up()
    records: list[dict] = []
    rigid = [rigid_case(n) for n in (QUICK_SIZES if quick else SIZES)]
    records += rigid + [fit_record("scaling_rigid", rigid, "pieces")]
    for kind in ("rubble", "dust"):
        series = [particle_case(kind, n) for n in (QUICK_PARTICLES if quick else PARTICLES)]
        records += series + [fit_record(f"scaling_{kind}", series, "particles")]
    return records


if __name__ == "__main__":
    import sys

    from benchmarks.runner import markdown_table

    print(markdown_table(run(quick="--quick" in sys.argv)))

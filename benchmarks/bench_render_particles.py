"""render_particles: the render stage with 10k, 100k and 1M rubble bits or dust particles.

Issue 5 asks for drawing up to a million particles on this CPU. Each case is the render stage
(``destruct.render.run_render``, every pass, EXR and PNGs at 1280x720) on a synthetic run of
500 box-like pieces with ``n`` rubble bits (5 cm rocks, instanced in the GL beauty, exact in
the id raster) or ``n`` dust particles (30 cm soft sprites) spread through and above the
block, moving each frame. It runs in its own interpreter, so ``peak_rss_mib`` is the case's
own; ``seconds_first`` includes the numba compile and GL context, ``seconds_per_frame`` is
the mean of the next two frames.

    python benchmarks/bench_render_particles.py [--quick]
"""

from __future__ import annotations

SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000,)
PIECES = 500


def _particles(kind: str, n: int, base, k: int, rng) -> dict:
    import numpy as np

    p = (base + 0.05 * k).astype(np.float32)
    if kind == "dust":
        return {
            "dust": {
                "position": p,
                "radius": np.full(n, 0.3, np.float32),
                "alpha": np.full(n, 0.05, np.float32),
            }
        }
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return {
        "rubble": {
            "id": np.arange(n, dtype=np.int32),
            "position": p,
            "rotation": q.astype(np.float32),
            "velocity": np.zeros((n, 3), np.float32),
            "radius": np.full(n, 0.05, np.float32),
            "material": (np.arange(n) % 3).astype(np.int32),
        }
    }


def _case(kind: str, n: int) -> dict:
    """One measured case, in this process (called in a child interpreter by :func:`run`)."""
    import os
    import resource
    import tempfile
    import time
    from pathlib import Path

    import numpy as np

    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    from benchmarks.bench_render import H, W, _frames, _pieces, _shot
    from destruct.io import save_npz
    from destruct.render import run_render
    from destruct.rundir import RunDir
    from destruct.stages import Stage, StageContext
    from tests._render_synth import sim_frame

    rng = np.random.default_rng(n)
    pieces, _, dims = _pieces(PIECES, rng)
    frames = _frames(pieces["com"], 3, rng)
    shot = _shot(dims, 3)
    lo, hi = pieces["com"].min(axis=0), pieces["com"].max(axis=0)
    base = rng.uniform(lo - 2, hi + 2, (n, 3))
    base[:, 1] = rng.uniform(0.05, hi[1] + 3, n)
    load = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        save_npz(run_dir / "fracture" / "pieces.npz", "destruct.pieces/1", **pieces)
        for k, (pos, q) in enumerate(frames):
            extra = _particles(kind, n, base, k, rng)
            save_npz(
                run_dir / "sim" / f"frame.{1001 + k:04d}.npz",
                "destruct.sim/1",
                **sim_frame(1001 + k, pos, q, **extra),
            )
        run = RunDir(run_dir)
        t0 = time.perf_counter()
        run_render(StageContext(shot=shot, run=run, stage=Stage.RENDER, frames=[1001]))
        t1 = time.perf_counter()
        run_render(StageContext(shot=shot, run=run, stage=Stage.RENDER, frames=[1002, 1003]))
        t2 = time.perf_counter()
        written = len(list((run_dir / "passes").glob("*.exr")))
    return {
        "name": f"render_{kind}_720p",
        "particles": n,
        "pieces": PIECES,
        "resolution": f"{W}x{H}",
        "frames_written": written,
        "seconds_first": round(t1 - t0, 3),
        "seconds_per_frame": round((t2 - t1) / 2, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "load_average": load,
    }


def run(quick: bool = False) -> list[dict]:
    """Every case in its own interpreter; one record per (kind, size)."""
    from benchmarks.runner import in_child

    return [
        in_child("bench_render_particles", "_case", kind, n)
        for n in (QUICK_SIZES if quick else SIZES)
        for kind in ("rubble", "dust")
    ]


if __name__ == "__main__":
    import sys
    from pathlib import Path as _Path

    sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))
    from benchmarks.runner import script

    script(__file__)

"""Memory estimates per stage, checked before the stage starts (issue 10).

The estimates are deliberately simple upper bounds from the shot's sizes (pieces, particles,
resolution); the per-item costs are generous round figures from the data each stage holds
(see the comments); the particle costs are measured peaks (benchmarks/bench_debris.py), the
others are not yet calibrated against measured peaks. A stage whose estimate exceeds the memory available refuses to start with a message naming the
setting to lower, instead of being killed by the OS half way through.
"""

from __future__ import annotations

from destruct.errors import UserError
from destruct.shot import Shot
from destruct.stages import Stage

MIB = 2**20
BASE = 600 * MIB  # interpreter, numpy, taichi / pyrender / torch runtimes
PER_PIECE = {  # bytes per fractured piece held by the stage
    Stage.PREPARE: 256 * 1024,  # cell polyhedra, manifold results, render mesh, hull
    Stage.SIMULATE: 48 * 1024,  # hull points, planes, contacts, bonds, per-frame copies
    Stage.RENDER: 64 * 1024,  # merged mesh of two frames, GL buffers
}
PER_RUBBLE = 540  # rubble bit: state + snapshot copies (measured peak, bench_debris) [bytes]
PER_DUST = 330  # dust particle: state + snapshot copies (measured peak, bench_debris) [bytes]
PER_PIXEL_RENDER = 3 * 160  # three frames (f-1, f, f+1) of every pass, float32 [bytes]
PER_PIXEL_REFINE = 2400  # UNet + ControlNet activations per output pixel at fp32, batch of 2 (CFG)


def estimate(shot: Shot, stage: Stage) -> int:
    """Peak host memory [bytes] the stage is expected to need for this shot."""
    pieces = shot.fracture.pieces
    w, h = shot.camera.resolution
    if stage is Stage.PREPARE:
        return BASE + pieces * PER_PIECE[stage]
    if stage is Stage.SIMULATE:
        dust = shot.debris.max_particles if shot.debris.dust else 0
        rubble = shot.debris.max_rubble if shot.debris.enabled else 0
        return BASE + pieces * PER_PIECE[stage] + dust * PER_DUST + rubble * PER_RUBBLE
    if stage is Stage.RENDER:
        return (
            BASE
            + pieces * PER_PIECE[stage]
            + w * h * PER_PIXEL_RENDER
            + shot.debris.max_particles * 64
        )
    if stage is Stage.REFINE:  # activations only: the weights' size is known once they are found
        return BASE + w * h * PER_PIXEL_REFINE
    return BASE + w * h * 16


def available() -> int:
    """Host memory available now [bytes]."""
    import psutil

    return int(psutil.virtual_memory().available)


def check(shot: Shot, stage: Stage, avail: int | None = None) -> int:
    """Raise UserError when the stage's estimate exceeds the available memory; return the estimate."""
    need = estimate(shot, stage)
    avail = available() if avail is None else avail
    if need > avail:
        hints = {
            Stage.PREPARE: "fracture.pieces",
            Stage.SIMULATE: "fracture.pieces or debris.max_particles",
            Stage.RENDER: "camera.resolution, fracture.pieces or debris.max_particles",
            Stage.REFINE: "camera.resolution (refine a smaller frame and upscale)",
            Stage.ENCODE: "camera.resolution",
        }
        raise UserError(
            f"stage {stage.value!r} needs about {need / 2**30:.1f} GiB of memory for this shot but "
            f"{avail / 2**30:.1f} GiB is available; lower {hints[stage]}, or run on a larger machine"
        )
    return need

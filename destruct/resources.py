"""Memory estimates per stage, checked before the stage starts (issue 10).

The estimates are deliberately simple upper bounds from the shot's sizes (pieces, particles,
resolution); the per-item costs are generous round figures from the data each stage holds
(see the comments); the particle costs are measured peaks (benchmarks/bench_debris.py), the
others are not yet calibrated against measured peaks. A stage whose estimate exceeds the memory
available refuses to start with a message naming the setting to lower, instead of being killed by
the OS half way through.

A stage on a CUDA GPU (simulate with sim.backend cuda, refine with refine.device cuda; "auto"
when a GPU is there) is checked a second time against the free GPU memory
(``torch.cuda.mem_get_info``; skipped without torch or CUDA). ``DESTRUCT_MEMORY_LIMIT_MIB`` and
``DESTRUCT_GPU_MEMORY_LIMIT_MIB`` cap the host and GPU memory counted as available (a share of a
shared machine, or tests; the GPU cap stands for a GPU with that much free).
"""

from __future__ import annotations

import os

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

# GPU figures. The CUDA context and the cuBLAS/cuDNN workspaces take a few hundred MiB before
# anything is allocated; Taichi's CUDA backend reserves a memory pool of ti.init's
# device_memory_GB (1.0 by default) on top of the fields.
CUDA_CONTEXT = 400 * MIB
TAICHI_POOL = 1024 * MIB
#: Parameters per model family of the recommended repos (refine/models.py), from their model
#: cards and safetensors sizes: (UNet, text encoders + VAE, one ControlNet). SD 1.5: UNet 860 M,
#: CLIP-L text encoder 123 M + VAE 84 M, a ControlNet v1.1 361 M per control. SDXL: UNet 2.57 G,
#: text encoders 123 M + 695 M + VAE 84 M, one ControlNet-Union (~2.5 GB at fp16) for every
#: control. Rough figures, for a family's usual fine-tunes too.
REFINE_PARAMS = {
    "sd15": (860e6, 207e6, 361e6),
    "sdxl": (2570e6, 902e6, 1250e6),
}
BYTES_PER_PARAM_GPU = 2  # refine runs bf16 (fp16 without bf16) on CUDA
PER_PIXEL_REFINE_GPU = PER_PIXEL_REFINE // 2  # the same activations at 16 bits [bytes]


def _per_item(shot: Shot, stage: Stage) -> int:
    """The stage's memory [bytes] that grows with the shot's pieces, particles and pixels."""
    pieces = shot.fracture.pieces
    w, h = shot.camera.resolution
    if stage is Stage.PREPARE:
        return pieces * PER_PIECE[stage]
    if stage is Stage.SIMULATE:
        dust = shot.debris.max_particles if shot.debris.dust else 0
        rubble = shot.debris.max_rubble if shot.debris.enabled else 0
        return pieces * PER_PIECE[stage] + dust * PER_DUST + rubble * PER_RUBBLE
    if stage is Stage.RENDER:
        return pieces * PER_PIECE[stage] + w * h * PER_PIXEL_RENDER + shot.debris.max_particles * 64
    if stage is Stage.REFINE:  # activations only: the weights' size is known once they are found
        return w * h * PER_PIXEL_REFINE
    return w * h * 16


def estimate(shot: Shot, stage: Stage) -> int:
    """Peak host memory [bytes] the stage is expected to need for this shot."""
    return BASE + _per_item(shot, stage)


def refine_family(shot: Shot) -> str:
    """``"sd15"`` or ``"sdxl"``: from a local model folder's model_index.json, else from the
    repo id (the recommended sets, or "xl" in the name)."""
    from refine.models import family_of_repo

    folder = os.path.expanduser(shot.refine.model)
    if os.path.isfile(os.path.join(folder, "model_index.json")):
        from refine.pipeline import detect_family

        try:
            return detect_family(folder).value
        except UserError:  # the refine stage reports it; the guard only needs a figure
            pass
    return family_of_repo(shot.refine.model) or ("sdxl" if "xl" in folder.lower() else "sd15")


def estimate_gpu(shot: Shot, stage: Stage) -> int:
    """Peak GPU memory [bytes] of the stage on CUDA; 0 for a stage that does not use the GPU.

    Simulate: the CUDA context, Taichi's pool and the same per-piece and per-particle state as on
    the host. Refine: the weights of the model family (only the UNet and its ControlNets with
    ``refine.cpu_offload``, which keeps the other models in host memory) and the activations.
    """
    if stage is Stage.SIMULATE:
        return CUDA_CONTEXT + TAICHI_POOL + _per_item(shot, stage)
    if stage is not Stage.REFINE:
        return 0
    family = refine_family(shot)
    unet, others, controlnet = REFINE_PARAMS[family]
    nets = 1 if family == "sdxl" else len(shot.refine.controlnets)
    params = unet + nets * controlnet + (0 if shot.refine.cpu_offload else others)
    w, h = shot.camera.resolution
    return CUDA_CONTEXT + int(params * BYTES_PER_PARAM_GPU) + w * h * PER_PIXEL_REFINE_GPU


def _limit(var: str) -> int | None:
    """A ``*_MIB`` environment variable in bytes, or None when unset."""
    raw = os.environ.get(var, "").strip()
    if not raw:
        return None
    try:
        mib = float(raw)
    except ValueError:
        raise UserError(f"{var}={raw!r}: give the memory in MiB, e.g. {var}=8192") from None
    if not mib > 0:
        raise UserError(f"{var}={raw!r}: must be a positive number of MiB")
    return int(mib * MIB)


def available() -> int:
    """Host memory available now [bytes], capped by ``DESTRUCT_MEMORY_LIMIT_MIB``."""
    import psutil

    free = int(psutil.virtual_memory().available)
    cap = _limit("DESTRUCT_MEMORY_LIMIT_MIB")
    return free if cap is None else min(free, cap)


def gpu_available() -> int | None:
    """Free memory [bytes] of the current CUDA device, capped by ``DESTRUCT_GPU_MEMORY_LIMIT_MIB``;
    None when there is no GPU to check (no CUDA driver or device, no torch) and no cap is set.
    Asking torch starts its CUDA context in this process (a few hundred MiB, counted in
    CUDA_CONTEXT)."""
    from sim_kernels.cuda import device_count

    cap = _limit("DESTRUCT_GPU_MEMORY_LIMIT_MIB")
    free = None
    if device_count():  # only then is torch worth loading (its import takes about a second)
        try:
            import torch

            free = int(torch.cuda.mem_get_info()[0]) if torch.cuda.is_available() else None
        except (ImportError, RuntimeError):  # no torch, or a CUDA runtime that cannot start
            pass
    if free is None or cap is None:
        return free if cap is None else cap
    return min(free, cap)


def _gpu_setting(shot: Shot, stage: Stage, backend: str | None) -> tuple[str, str]:
    """The device setting of a stage that may run on CUDA (and its shot key), else ``("cpu", "")``."""
    if stage is Stage.SIMULATE:
        setting = backend or shot.sim.backend
        return setting, "sim.backend" if setting == shot.sim.backend else "--backend"
    if stage is Stage.REFINE:
        return shot.refine.device, "refine.device"
    return "cpu", ""


def check(
    shot: Shot,
    stage: Stage,
    avail: int | None = None,
    *,
    backend: str | None = None,
    gpu_avail: int | None = None,
) -> int:
    """Raise UserError when the stage's estimate exceeds the available memory; return the estimate.

    ``backend`` is the sim backend in use (default ``sim.backend``). A stage that runs on CUDA is
    also checked against ``gpu_avail`` (default: :func:`gpu_available`; an injected figure stands
    for a GPU with that much free, so ``"auto"`` counts as CUDA).
    """
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
    setting, key = _gpu_setting(shot, stage, backend)
    if setting in ("cuda", "auto"):
        free = gpu_available() if gpu_avail is None else gpu_avail
        _check_gpu(shot, stage, f"{key} = {setting!r}", free)
    return need


def _check_gpu(shot: Shot, stage: Stage, setting: str, free: int | None) -> None:
    if free is None:  # no GPU to run on: "auto" runs on the CPU, "cuda" fails in the stage itself
        return
    need = estimate_gpu(shot, stage)
    if need <= free:
        return
    if stage is Stage.SIMULATE:
        fix = 'lower fracture.pieces or debris.max_particles, or use sim.backend = "cpu"'
    else:
        offload = "" if shot.refine.cpu_offload else "set refine.cpu_offload = true, "
        fix = f'{offload}lower camera.resolution, or use refine.device = "cpu"'
    raise UserError(
        f"stage {stage.value!r} needs about {need / 2**30:.1f} GiB of GPU memory for this shot "
        f"({setting}) but {free / 2**30:.1f} GiB is free on the GPU; {fix}"
    )

"""The one place that imports and initialises Taichi (DESIGN.md section 6).

Every other kernel module does ``from sim_kernels.backend import ti`` so a move to the Quadrants
fork stays local to this file. Kernels take ``ti.ndarray`` arguments, never global fields: an
ndarray can be reallocated when a World grows without recompiling a kernel, and one compiled
kernel serves every World in the process.

Kernel code keeps guards that protect an index in nested ``if``s: Taichi evaluates both
operands of ``and`` (no short-circuit), so ``i >= 0 and a[i] ...`` would read a[-1].

Solver state is float64 (positions of a 30 m building at 1e-7 relative precision; caches are
written as float32 by the host).
"""

import os

import numpy as np
import taichi as ti

from sim_kernels import cuda

f64 = ti.f64
i32 = ti.i32
vec3 = ti.types.vector(3, f64)
vec4 = ti.types.vector(4, f64)
mat3 = ti.types.matrix(3, 3, f64)
F2 = ti.types.ndarray(dtype=f64, ndim=2)  # (rows, columns) float table, columns named per module
I2 = ti.types.ndarray(dtype=i32, ndim=2)  # (rows, columns) int table
I1 = ti.types.ndarray(dtype=i32, ndim=1)

_initialised: tuple[str, int] | None = None


def init(backend: str = "cpu", threads: int = 0) -> str:
    """Initialise Taichi once per process; return the arch used ("cpu" or "cuda").

    ``backend``: "cpu", "cuda" or "auto" (cuda when a CUDA device is present, else cpu).
    ``threads``: CPU worker threads, 0 = all cores. Taichi can be initialised only once per
    process, so a later call with a different arch or thread count raises ValueError.
    """
    global _initialised
    if backend not in ("cpu", "cuda", "auto"):
        raise ValueError(f"backend must be 'cpu', 'cuda' or 'auto', got {backend!r}")
    threads = int(threads) if threads else (os.cpu_count() or 1)
    if _initialised is not None:
        arch, n = _initialised
        if backend not in ("auto", arch) or (arch == "cpu" and n != threads):
            raise ValueError(
                f"Taichi already runs on {arch} with {n} threads in this process; it cannot switch "
                f"to backend={backend!r}, threads={threads}: start a new process"
            )
        return arch
    arch = backend
    if backend == "auto":
        arch = "cuda" if _cuda_present() else "cpu"
    _lean_source_positions()
    ti.init(
        arch=ti.cuda if arch == "cuda" else ti.cpu,
        cpu_max_num_threads=threads,
        default_fp=ti.f64,
        default_ip=ti.i32,
        offline_cache=True,
        # Taichi's advanced optimisation passes cost ~10x compile time on the large substep
        # kernel (90 s vs 7 s measured on this 2-core machine) for little run-time gain
        advanced_optimization=False,
        random_seed=0,
        log_level=ti.WARN,
    )
    _initialised = (arch, threads)
    return arch


def _lean_source_positions() -> None:
    """Taichi 1.7 formats a caret-underlined source excerpt (through textwrap) for every AST node
    it compiles, in case an error message needs it: half the time of the first step of the
    default shot, which compiles the substep kernels (build and first step 9.7-11 s, 5.4-6.2 s
    without the excerpts, measured on this 2-core machine). Errors keep the file, line and
    function, which is what they need to be found; only the excerpt goes."""
    from taichi.lang.ast import ast_transformer_utils as utils

    ctx = getattr(utils, "ASTTransformerContext", None)
    if ctx is None or not hasattr(ctx, "get_pos_info"):  # another Taichi: leave it as it is
        return

    def pos_info(self, node) -> str:
        line = node.lineno + self.lineno_offset
        return f'File "{self.file}", line {line}, in {self.func.func.__name__}:\n'

    ctx.get_pos_info = pos_info


def _cuda_present() -> bool:
    try:
        from taichi._lib import core

        return bool(core.with_cuda()) and cuda.device_count() > 0
    except Exception:  # noqa: BLE001 - no CUDA runtime at all
        return False


def ndarray_f(rows: int, cols: int):
    """A zeroed (rows, cols) float64 ndarray (at least one row: Taichi refuses empty arrays)."""
    a = ti.ndarray(dtype=f64, shape=(max(rows, 1), cols))
    a.fill(0.0)
    return a


def ndarray_i(rows: int, cols: int):
    """A zeroed (rows, cols) int32 ndarray (at least one row)."""
    a = ti.ndarray(dtype=i32, shape=(max(rows, 1), cols))
    a.fill(0)
    return a


def ndarray_i1(n: int):
    """A zeroed (n,) int32 ndarray (at least one element)."""
    a = ti.ndarray(dtype=i32, shape=max(n, 1))
    a.fill(0)
    return a


def empty_f(*shape: int):
    """An uninitialised float64 ndarray of ``shape`` (1-D or 2-D, every extent >= 1): scratch
    that a kernel writes in full before anything reads it (no fill launch)."""
    return ti.ndarray(dtype=f64, shape=shape)


def empty_i(*shape: int):
    """An uninitialised int32 ndarray of ``shape`` (as :func:`empty_f`)."""
    return ti.ndarray(dtype=i32, shape=shape)


def upload(a: np.ndarray):
    """A device copy of a float64 or int32 array (at least one row: an empty one becomes one
    zero row, as Taichi refuses empty arrays)."""
    if a.dtype not in (np.float64, np.int32):
        raise TypeError(f"upload takes float64 or int32 arrays, got {a.dtype}")
    a = np.ascontiguousarray(a)
    if len(a) == 0:
        a = np.zeros((1, *a.shape[1:]), dtype=a.dtype)
    out = ti.ndarray(dtype=f64 if a.dtype == np.float64 else i32, shape=a.shape)
    out.from_numpy(a)
    return out


def is_float(a) -> bool:
    """True for a float64 ndarray (a float table), False for an int32 one."""
    return a.dtype == f64


# ---- small vector helpers shared by the kernel modules ----------------------------------------


@ti.func
def get3(a: ti.template(), i, c: ti.template()) -> vec3:
    return vec3(a[i, c], a[i, c + 1], a[i, c + 2])


@ti.func
def set3(a: ti.template(), i, c: ti.template(), v):
    a[i, c] = v[0]
    a[i, c + 1] = v[1]
    a[i, c + 2] = v[2]


@ti.func
def get4(a: ti.template(), i, c: ti.template()) -> vec4:
    return vec4(a[i, c], a[i, c + 1], a[i, c + 2], a[i, c + 3])


@ti.func
def set4(a: ti.template(), i, c: ti.template(), v):
    a[i, c] = v[0]
    a[i, c + 1] = v[1]
    a[i, c + 2] = v[2]
    a[i, c + 3] = v[3]


@ti.func
def quat_mul(a, b) -> vec4:
    """Hamilton product of wxyz quaternions."""
    av = vec3(a[1], a[2], a[3])
    bv = vec3(b[1], b[2], b[3])
    w = a[0] * b[0] - av.dot(bv)
    v = a[0] * bv + b[0] * av + av.cross(bv)
    return vec4(w, v[0], v[1], v[2])


@ti.func
def quat_conj(q) -> vec4:
    return vec4(q[0], -q[1], -q[2], -q[3])


@ti.func
def quat_rotate(q, v) -> vec3:
    u = vec3(q[1], q[2], q[3])
    t = 2.0 * u.cross(v)
    return v + q[0] * t + u.cross(t)


@ti.func
def quat_add_rotation(q, dtheta) -> vec4:
    """q + 0.5 [0, dtheta] q, normalised: apply a small world-space rotation vector."""
    dq = quat_mul(vec4(0.0, dtheta[0], dtheta[1], dtheta[2]), q)
    r = q + 0.5 * dq
    return r / r.norm()


@ti.func
def quat_matrix(q) -> mat3:
    w, x, y, z = q[0], q[1], q[2], q[3]
    return mat3(
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    )

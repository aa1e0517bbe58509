"""Whether this machine has a CUDA GPU, asked of the driver (libcuda) through ctypes.

No Taichi and no torch: the resource guard asks before a stage starts, and on a machine
without the driver neither heavy library is loaded for the answer.
"""

import ctypes


def device_count() -> int:
    """CUDA devices the driver sees; 0 without the driver or when it cannot start."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    if lib.cuInit(0) != 0:
        return 0
    n = ctypes.c_int(0)
    return n.value if lib.cuDeviceGetCount(ctypes.byref(n)) == 0 else 0

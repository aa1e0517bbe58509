"""The machine a benchmark ran on: CPU, cores, memory, versions and measured memory bandwidth."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata

import numpy as np

PACKAGES = (
    "numpy",
    "taichi",
    "pybullet",
    "pyrender2",
    "torch",
    "diffusers",
    "manifold3d",
    "usd-core",
)


def memory_bandwidth_gbs(mb: int = 256, repeats: int = 5) -> float:
    """Best-of copy bandwidth of a large numpy array [GB/s], counting read + write bytes."""
    a = np.ones(mb * 2**20 // 8)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best / 1e9


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict:
    """A JSON-ready description of this machine and the software under test."""
    import psutil

    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": "cpu",
        "gpu": None,
        "memory_bandwidth_gbs": round(memory_bandwidth_gbs(), 2),
        "versions": versions,
    }

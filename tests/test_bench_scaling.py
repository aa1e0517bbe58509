"""The helpers of the scaling and floor benchmarks: exponent fit, byte counting, peak memory."""

import numpy as np
import pytest

from benchmarks.bench_floor import KERNELS, substep_traffic
from benchmarks.bench_scaling import (
    device_bytes,
    fit_exponent,
    ndarray_bytes,
    peak_memory,
    pile_world,
)


def test_fit_exponent_recovers_power_laws():
    n = np.array([250, 1000, 4000, 16000])
    assert fit_exponent(n, 3e-5 * n**1.5) == pytest.approx(1.5, abs=1e-9)
    assert fit_exponent(n, 2.0 * n) == pytest.approx(1.0, abs=1e-9)
    # a fixed overhead bends the curve below 1 at small sizes
    assert fit_exponent(n, 0.1 + 1e-4 * n) < 0.9
    with pytest.raises(ValueError, match="two or more distinct sizes"):
        fit_exponent([1000, 1000], [1.0, 2.0])


@pytest.fixture(scope="module")
def ti():
    from sim_kernels.backend import init, ti

    init("cpu", 0)
    return ti


def test_ndarray_and_device_bytes(ti):
    f = ti.ndarray(dtype=ti.f64, shape=(3, 4))
    i = ti.ndarray(dtype=ti.i32, shape=5)
    assert ndarray_bytes(f) == 96 and ndarray_bytes(i) == 20

    class Holder:
        def __init__(self):
            self.f = f
            self.tables = {"i": i, "again": f, "gone": None}
            self.host = np.zeros(1000)  # numpy arrays are not device bytes

    assert device_bytes(Holder()) == 96 + 20  # f counted once


def test_pile_world_device_bytes_cover_its_tables(ti):
    w = pile_world(8)
    w.step(1 / 24, 2)
    assert w.num_bodies == 8
    # two columns of four, each piece above the one below it
    y = w.positions()[:4, 1]
    assert np.all(np.diff(y) > 0.45)
    # body table 8 x 50 f64, body ints 8 x 4 i32, 8 hulls of 8 vertices x 3 f64
    assert device_bytes(w) >= 8 * 50 * 8 + 8 * 4 * 4 + 64 * 3 * 8
    # the floor's table of a substep's launches names arrays the World really holds
    assert {name for args in KERNELS.values() for name, _ in args} <= set(w._dev)
    t = substep_traffic(w._dev, w.last_pairs, 0, w.last_units, w.iterations)
    assert t["bytes_narrowphase"] >= 8 * 50 * 8 + 64 * 3 * 8  # the bodies and hull vertices


def test_substep_traffic_counts_live_rows_once_per_read_and_write(ti):
    def f(r, c):
        return ti.ndarray(dtype=ti.f64, shape=(r, c))

    def i(r, c=None):
        return ti.ndarray(dtype=ti.i32, shape=(r,) if c is None else (r, c))

    dev = {
        "bf": f(2, 50),
        "bi": i(2, 4),
        "si": i(2, 5),
        "hv": f(16, 3),
        "hp": f(12, 4),
        "se": i(2, 2),
        "he": f(24, 15),
        "pairs": i(10, 4),
        "pn": f(10, 6),
        "cf": f(80, 8),
        "bdf": f(1, 25),
        "bdi": i(1, 3),
        "bstart": i(3),
        "blist": i(1),
        "xstart": i(3),
        "xlist": i(1),
        "units": i(10, 2),
        "count": i(1),
        "ustart": i(17),
        "ulist": i(10),
    }
    t = substep_traffic(dev, npairs=3, npoints=5, nunits=2, iterations=8)
    # read: bf 800, si 40, se 16, hv 384, hp 384, he 2880; read + write: pairs 3 x 16,
    # pn 3 x 48, cf 5 x 64
    assert t["bytes_narrowphase"] == 800 + 40 + 16 + 384 + 384 + 2880 + 2 * (48 + 144 + 320)
    # read: bf 800, bi 32, si 40, pairs 48, bdi 12, lists 12 + 4 + 12 + 4; written: units
    # 2 x 8, count 4, ustart 68, ulist 2 x 4
    assert t["bytes_build_units"] == 800 + 32 + 40 + 48 + 12 + 32 + 2 * (16 + 4 + 68 + 8)
    # a sweep writes bf, pn, cf, bdf (200) and reads bi, si, pairs, bdi, units, ustart, ulist
    sweep = 2 * (800 + 144 + 320 + 200) + 32 + 40 + 48 + 12 + 16 + 68 + 8
    assert t["bytes_position_sweeps"] == 8 * sweep  # one launch per iteration
    assert t["bytes_velocity_sweep"] == sweep
    assert t["bytes_per_substep"] == (t["bytes_narrowphase"] + t["bytes_build_units"] + 9 * sweep)


def test_peak_memory_sees_a_touched_allocation():
    with peak_memory() as mem:
        a = np.ones(50 * 2**20 // 8)  # 50 MiB, written
        del a
    assert mem.mb >= 45

"""sim_kernels.backend: Taichi's compile errors still say where they are after the backend
drops the source excerpts Taichi 1.7 formats for every node it compiles. (No ``from __future__
import annotations`` here: Taichi evaluates a kernel's annotations.)"""

from pathlib import Path

import numpy as np
import pytest


def test_a_kernel_error_names_its_file_line_and_function():
    from sim_kernels.backend import init, ti

    init("cpu")

    @ti.kernel
    def broken(a: ti.types.ndarray(dtype=ti.f64, ndim=1)):
        for i in range(3):
            a[i] = undefined_name + 1.0  # noqa: F821 - the error under test

    with pytest.raises(Exception, match="undefined_name") as err:
        broken(np.zeros(3))
    src = Path(__file__).read_text().splitlines()
    line = next(i for i, s in enumerate(src, 1) if "a[i] = undefined_name" in s)
    assert f'File "{__file__}", line {line}, in broken' in str(err.value)

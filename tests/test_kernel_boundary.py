"""All Taichi use stays inside sim_kernels/ behind sim_kernels/backend.py (DESIGN.md section 6),
so a move to the Quadrants fork stays local: host packages neither import taichi nor touch a
name ``ti``. Checked on the source with ``ast``, so no Taichi is needed."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST_PACKAGES = ("destruct", "refine")


def taichi_uses(source: str, filename: str = "<string>") -> list[str]:
    """``file:line what`` for each taichi import, import of a name ``ti``, ``ti.<attr>`` access
    or ``import_module("taichi")`` in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        what = None
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "taichi"]
            what = f"import {', '.join(names)}" if names else None
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] == "taichi":
                what = f"from {node.module} import ..."
            elif any((a.asname or a.name) == "ti" for a in node.names):
                what = f"from {node.module} import ti"
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "ti":
                what = f"ti.{node.attr}"
        elif isinstance(node, ast.Call) and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and str(arg.value).split(".")[0] == "taichi":
                what = f"dynamic import of {arg.value!r}"
        if what:
            found.append(f"{filename}:{node.lineno} {what}")
    return found


def test_the_checker_finds_each_kind_of_use():
    src = (
        "import taichi as ti\n"
        "from taichi.lang import ops\n"
        "from sim_kernels.backend import ti\n"
        "a = ti.ndarray(ti.i32, 3)\n"
        "m = importlib.import_module('taichi')\n"
        "self._ti.ndarray  # not a bare name ti: allowed\n"
        "x = 'taichi'  # a string: allowed\n"
    )
    lines = sorted(int(u.split(":")[1].split()[0]) for u in taichi_uses(src))
    assert lines == [1, 2, 3, 4, 4, 5]


def test_host_packages_use_no_taichi_outside_sim_kernels():
    files = [p for pkg in HOST_PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 20  # the packages were found
    uses = [u for p in files for u in taichi_uses(p.read_text(), str(p.relative_to(ROOT)))]
    assert uses == []

"""``import destruct`` stays light (DESIGN.md section 1) and validate answers fast."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "diffusers", "pyrender", "taichi", "transformers", "ray", "OpenGL")


def test_import_destruct_loads_no_heavy_module():
    code = (
        "import sys, destruct, destruct.cli, destruct.pipeline, destruct.shot\n"
        "destruct.load_shot(destruct.default_shot_path())\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == ""

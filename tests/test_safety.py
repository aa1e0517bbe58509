"""Safe loading, checked on the code itself (ast, not text search): no pickles from disk, no
torch.load without weights_only=True, no trust_remote_code, no eval/exec builtins."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("destruct", "sim_kernels", "refine", "benchmarks", "assets")


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return _dotted(node.value) + "." + node.attr
    return ""


def problems(tree: ast.AST) -> list[str]:
    """Unsafe loading patterns in one module's syntax tree."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            line = getattr(node, "lineno", 0)
            if (
                name.endswith(".load")
                and name.split(".")[0] in ("np", "numpy")
                and _is_true(_kw(node, "allow_pickle"))
            ):
                out.append(f"{line}: np.load(allow_pickle=True)")
            if name in ("torch.load",) and not _is_true(_kw(node, "weights_only")):
                out.append(f"{line}: torch.load without weights_only=True")
            if name.split(".")[0] in ("pickle", "cPickle", "dill", "joblib") and name.split(".")[
                -1
            ] in ("load", "loads", "dump", "dumps"):
                out.append(f"{line}: {name}")
            if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
                out.append(f"{line}: {name}()")
        if (
            isinstance(node, ast.keyword)
            and node.arg == "trust_remote_code"
            and not (isinstance(node.value, ast.Constant) and node.value.value is False)
        ):
            out.append(f"{getattr(node.value, 'lineno', 0)}: trust_remote_code set")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            if any(
                m.split(".")[0] in ("pickle", "cPickle", "dill", "shelve", "marshal") for m in mods
            ):
                out.append(f"{node.lineno}: imports {', '.join(mods)}")
    return sorted(set(out))


def test_the_checker_catches_each_pattern():
    bad = (
        "import pickle\nimport numpy as np\nnp.load('a', allow_pickle=True)\ntorch.load('w.pt')\n"
        "eval('1')\nexec('x=1')\nf(trust_remote_code=True)\npickle.load(open('x','rb'))\n"
    )
    found = problems(ast.parse(bad))
    assert len(found) == 7, found
    ok = (
        "import numpy as np\nnp.load('a', allow_pickle=False)\ntorch.load('w', weights_only=True)\n"
    )
    assert problems(ast.parse(ok)) == []


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_unsafe_loading(path):
    assert problems(ast.parse(path.read_text(), str(path))) == []

"""Safe loading, checked on the code itself (ast, not text search): no pickles from disk, no
torch.load without weights_only=True, no trust_remote_code, no eval/exec builtins.

Names are resolved through each module's imports (``import numpy as N``, ``from torch import
load``, ``f = np.load``), so an alias does not hide a call. The resolution is per module, not per
scope: a local name bound to several things anywhere in the module counts as all of them.
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("destruct", "sim_kernels", "refine", "benchmarks", "assets")

#: Modules whose import alone is refused: each one reads or writes pickles (or code objects).
PICKLE_MODULES = ("pickle", "_pickle", "cPickle", "dill", "shelve", "marshal", "cloudpickle")
#: Calls that unpickle (or pickle) whatever they are given, keyword arguments notwithstanding.
PICKLE_CALLS = ("joblib.load", "joblib.dump", "pandas.read_pickle", "pandas.to_pickle")
NP_LOAD = ("numpy.load", "numpy.lib.npyio.load")
TORCH_LOAD = ("torch.load", "torch.serialization.load")
CODE_BUILTINS = ("builtins.eval", "builtins.exec")
IMPORTERS = ("builtins.__import__", "importlib.import_module", "importlib.__import__")


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def _is_const(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _root_module(name: str) -> str:
    return name.split(".")[0]


class Aliases(ast.NodeVisitor):
    """Local name -> the fully qualified names it may stand for, from one module's imports and
    plain assignments (``load = np.load``). Names never bound resolve to themselves, builtins
    to ``builtins.NAME``, and names a star import may have brought in to ``MODULE.NAME`` too."""

    def __init__(self, tree: ast.AST):
        self.names: dict[str, set[str]] = {}
        self.star: set[str] = set()
        self.visit(tree)
        # a second pass lets `f = np.load` above `import numpy as np` in another scope resolve
        self.visit(tree)

    def _bind(self, local: str, qualified: set[str]) -> None:
        self.names.setdefault(local, set()).update(qualified)

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.asname:
                self._bind(a.asname, {a.name})
            else:  # `import numpy.linalg` binds `numpy`
                self._bind(_root_module(a.name), {_root_module(a.name)})

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = "." * node.level + (node.module or "")
        for a in node.names:
            if a.name == "*":
                self.star.add(module)
            else:
                self._bind(a.asname or a.name, {f"{module}.{a.name}".lstrip(".")})

    def visit_Assign(self, node: ast.Assign) -> None:
        targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        if targets and isinstance(node.value, (ast.Name, ast.Attribute)):
            for t in targets:
                self._bind(t, self.resolve(node.value) - {t})
        self.generic_visit(node)

    def resolve(self, node: ast.AST) -> set[str]:
        """Every fully qualified name ``node`` (a Name or an attribute chain) may stand for."""
        if isinstance(node, ast.Name):
            if node.id in self.names:
                return set(self.names[node.id])
            own = f"builtins.{node.id}" if hasattr(builtins, node.id) else node.id
            return {own} | {f"{m}.{node.id}" for m in self.star}
        if isinstance(node, ast.Attribute):
            return {f"{base}.{node.attr}" for base in self.resolve(node.value)}
        if (  # getattr(np, "load")
            isinstance(node, ast.Call)
            and "builtins.getattr" in self.resolve(node.func)
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
        ):
            return {f"{base}.{node.args[1].value}" for base in self.resolve(node.args[0])}
        return set()


def _kwarg(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _allow_pickle_off(call: ast.Call) -> bool:
    """True when an np.load call provably keeps ``allow_pickle`` False: given as a literal
    False (keyword or third positional), or absent (its default) with no ``*args`` that could
    reach its position and no ``**kw`` that could carry it. A literal keyword next to ``**kw``
    holds, since a second value in ``**kw`` would be a TypeError."""
    given = _kwarg(call, "allow_pickle")
    if given is not None:
        return _is_const(given, False)
    if len(call.args) > 2:
        return _is_const(call.args[2], False)
    return not any(isinstance(a, ast.Starred) for a in call.args) and all(
        k.arg is not None for k in call.keywords
    )


def _call_problems(call: ast.Call, names: set[str]) -> list[str]:
    out = []
    if names & set(NP_LOAD) and not _allow_pickle_off(call):
        out.append("np.load with allow_pickle not provably False")
    # a literal weights_only=True next to **kw holds, as allow_pickle does above
    if names & set(TORCH_LOAD) and not _is_const(_kwarg(call, "weights_only"), True):
        out.append("torch.load without weights_only=True")
    for n in sorted(names):
        if _root_module(n) in PICKLE_MODULES or n in PICKLE_CALLS:
            out.append(f"{n}()")
    for n in sorted(names & set(CODE_BUILTINS)):
        out.append(f"{n.split('.')[-1]}() builtin")
    if names & set(IMPORTERS) and call.args and isinstance(call.args[0], ast.Constant):
        target = str(call.args[0].value)
        if _root_module(target) in PICKLE_MODULES:
            out.append(f"imports {target} dynamically")
    return out


def _trust_remote_code(node: ast.AST) -> bool:
    """``trust_remote_code`` as a keyword or a string anywhere, unless literally set to False."""
    if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
        return not _is_const(node.value, False)
    if isinstance(node, ast.Dict):
        return any(
            _is_const_str(k) and not _is_const(v, False) for k, v in zip(node.keys, node.values)
        )
    return False


def _is_const_str(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value == "trust_remote_code"


def problems(tree: ast.AST) -> list[str]:
    """Unsafe loading patterns in one module's syntax tree, as ``"LINE: what"``."""
    aliases = Aliases(tree)
    out: set[str] = set()
    dict_keys = {id(k) for d in ast.walk(tree) if isinstance(d, ast.Dict) for k in d.keys if k}
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Call):
            out.update(f"{line}: {p}" for p in _call_problems(node, aliases.resolve(node.func)))
        if isinstance(node, ast.keyword) and _trust_remote_code(node):
            out.add(f"{getattr(node.value, 'lineno', 0)}: trust_remote_code set")
        if isinstance(node, ast.Dict) and _trust_remote_code(node):
            out.add(f"{line}: trust_remote_code as a dict key")
        if _is_const_str(node) and id(node) not in dict_keys:  # kw["trust_remote_code"] = ...
            out.add(f"{line}: trust_remote_code as a string")
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names if _root_module(a.name) in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom):
            mods = [node.module] if _root_module(node.module or "") in PICKLE_MODULES else []
        else:
            mods = []
        if mods:
            out.add(f"{line}: imports {', '.join(mods)}")
    return sorted(out)


def _found(code: str) -> list[str]:
    return problems(ast.parse(code))


#: Each snippet hides at least one unsafe load; the checker must report it.
BAD = {
    "np.load allow_pickle": "import numpy as np\nnp.load('a', allow_pickle=True)",
    "numpy.load allow_pickle": "import numpy\nnumpy.load('a', allow_pickle=True)",
    "from numpy import load": "from numpy import load\nload('a', allow_pickle=True)",
    "from numpy import load as L": "from numpy import load as L\nL('a', allow_pickle=True)",
    "import numpy as N": "import numpy as N\nN.load('a', allow_pickle=True)",
    "np.load allow_pickle variable": "import numpy as np\nnp.load('a', allow_pickle=flag)",
    "np.load allow_pickle positional": "import numpy as np\nnp.load('a', None, True)",
    "np.load **kw": "import numpy as np\nkw = {'allow_pickle': True}\nnp.load('a', **kw)",
    "np.load *args": "import numpy as np\nnp.load(*args)",
    "assigned alias": "import numpy as np\nf = np.load\nf('a', allow_pickle=True)",
    "getattr": "import torch\ngetattr(torch, 'load')('w.pt')",
    "numpy star import": "from numpy import *\nload('a', allow_pickle=True)",
    "function-level import": "def f(p):\n    import numpy as q\n    return q.load(p, allow_pickle=True)",
    "torch.load bare": "import torch\ntorch.load('w.pt')",
    "import torch as T": "import torch as T\nT.load('w.pt')",
    "from torch import load": "from torch import load\nload('w.pt')",
    "torch.load weights_only False": "import torch\ntorch.load('w.pt', weights_only=False)",
    "torch.load **kw": "import torch\ntorch.load('w.pt', **kw)",
    "torch.serialization.load": "from torch import serialization\nserialization.load('w.pt')",
    "import pickle": "import pickle",
    "import pickle as P": "import pickle as P",
    "from pickle import loads": "from pickle import loads",
    "pickle.load": "import pickle\npickle.load(open('x', 'rb'))",
    "pickle.loads alias": "from pickle import loads as L\nL(b'')",
    "import dill": "import dill",
    "joblib.load": "import joblib\njoblib.load('m.joblib')",
    "dynamic pickle import": "import importlib\nimportlib.import_module('pickle')",
    "__import__ pickle": "__import__('pickle')",
    "trust_remote_code keyword": "f(trust_remote_code=True)",
    "trust_remote_code variable": "f(trust_remote_code=flag)",
    "trust_remote_code dict key": "kw = {'trust_remote_code': True}",
    "trust_remote_code subscript": "kw['trust_remote_code'] = True",
    "trust_remote_code dict()": "kw = dict(trust_remote_code=True)",
    "eval": "eval('1')",
    "exec": "exec('x = 1')",
    "builtins.eval": "import builtins\nbuiltins.eval('1')",
    "from builtins import exec": "from builtins import exec as run\nrun('x = 1')",
    "eval assigned": "e = eval\ne('1')",
    "eval via getattr": "import builtins\ngetattr(builtins, 'eval')('1')",
}

#: Safe forms the checker must leave alone.
OK = {
    "np.load allow_pickle False": "import numpy as np\nnp.load('a', allow_pickle=False)",
    "np.load default": "import numpy as np\nwith np.load('a.npz') as z:\n    pass",
    "np.load mmap positional": "import numpy as np\nnp.load('a', 'r')",
    "np.load **kw with explicit False": "import numpy as np\nnp.load('a', allow_pickle=False, **kw)",
    "torch.load weights_only": "import torch\ntorch.load('w', weights_only=True)",
    "torch.load alias weights_only": "import torch as T\nT.load('w', weights_only=True, **kw)",
    "other load": "import json\njson.load(open('a'))",
    "trust_remote_code False": "f(trust_remote_code=False)\nkw = {'trust_remote_code': False}",
    "method named eval": "model.eval()\nself.exec_step()",
    "shadowed eval": "from mylib import eval\neval('x')",
    "importlib other": "import importlib\nimportlib.import_module('json')",
    "docstring mention": '"""remote code is never trusted; no pickle."""',
}


@pytest.mark.parametrize("code", BAD.values(), ids=BAD.keys())
def test_the_checker_catches_each_bypass(code):
    assert _found(code), code


@pytest.mark.parametrize("code", OK.values(), ids=OK.keys())
def test_the_checker_passes_safe_forms(code):
    assert _found(code) == []


def test_the_checker_names_the_line():
    code = "import numpy as N\n\n\nN.load('a', allow_pickle=True)\n"
    assert _found(code) == ["4: np.load with allow_pickle not provably False"]


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_unsafe_loading(path):
    assert problems(ast.parse(path.read_text(), str(path))) == []

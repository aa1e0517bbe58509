"""Fuzzing the shot schema with hypothesis: validation never crashes with a traceback.

Any dictionary either validates to a Shot or raises UserError with one ``source: ...`` line per
problem. 50 examples in the fast suite, 500 in the slow one.
"""

from __future__ import annotations

import copy

import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import destruct
from destruct.errors import UserError
from destruct.shot import Shot, shot_from_dict

SECTIONS = list(Shot.model_fields)
BASE = destruct.load_shot(destruct.default_shot_path()).to_dict()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
keys = st.one_of(
    st.sampled_from(SECTIONS + ["frames", "pieces", "position", "time", "name"]),
    st.text(max_size=8),
)


def _paths(d, prefix=()):
    """Every key path of a nested dict/list."""
    if isinstance(d, dict):
        for k, v in d.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


ALL_PATHS = list(_paths(BASE))


@st.composite
def mutated_shots(draw):
    """The default shot with a few keys replaced, deleted or added."""
    d = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ALL_PATHS))
        node = d
        try:
            for p in path[:-1]:
                node = node[p]
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                node[path[-1]] = draw(values)
            elif action == "delete" and isinstance(node, dict):
                node.pop(path[-1], None)
            elif isinstance(node, dict):
                node[draw(keys)] = draw(values)
        except (KeyError, IndexError, TypeError):
            continue
    return d


shots = st.one_of(mutated_shots(), st.dictionaries(keys, values, max_size=5))


def _check(data):
    try:
        shot = shot_from_dict(data, source="fuzz.toml")
    except UserError as e:
        lines = str(e).splitlines()
        assert lines and all(line.startswith("fuzz.toml") for line in lines)
        assert "Traceback" not in str(e)
    else:
        assert isinstance(shot, Shot)
        assert shot.to_toml()  # a valid shot always serialises back


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shots)
@example(data={"materials": {"\x1e": None}})  # a key with a line separator stays on one line
@example(data={"sim": {"a\nb": 1}})
def test_validate_never_crashes(data):
    _check(data)


@pytest.mark.slow
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shots)
def test_validate_never_crashes_long(data):
    _check(data)


@settings(max_examples=25, deadline=None)
@given(mutated_shots())
def test_fuzzed_toml_files_load_or_fail_clearly(tmp_path_factory, data):
    try:
        text = tomli_w.dumps(data)
    except (TypeError, ValueError):
        return  # not representable as TOML (None values): nothing a user could write
    p = tmp_path_factory.mktemp("fz") / "shot.toml"
    p.write_text(text)
    try:
        destruct.load_shot(p)
    except UserError as e:
        assert str(e).strip()

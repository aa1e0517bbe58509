"""Material presets and shot overrides."""

import math

import pytest

from destruct.errors import UserError
from destruct.materials import MATERIAL_NAMES, PRESETS, resolve


def test_presets_cover_the_issue_and_are_physical():
    assert set(MATERIAL_NAMES) == {
        "concrete",
        "reinforced_concrete",
        "brick",
        "glass",
        "wood",
        "steel",
    }
    for m in PRESETS.values():
        assert 0 < m.density < 10000 and 0 <= m.friction <= 1.5 and 0 <= m.restitution <= 1
        # every material is weaker in tension and shear than in compression
        assert 0 < m.tensile <= m.compressive and 0 < m.shear <= m.compressive
        assert 0 <= m.ade20k < 150
        assert all(0 <= c <= 1 for c in m.color + m.interior_color)


def test_mohr_coulomb_shear_of_concrete():
    c = PRESETS["concrete"]
    assert c.shear == pytest.approx(math.sqrt(30e6 * 2.9e6) / 2)
    assert PRESETS["steel"].shear == pytest.approx(355e6 / math.sqrt(3))
    # reinforcement raises the tensile strength of concrete
    assert PRESETS["reinforced_concrete"].tensile > c.tensile


def test_resolve_applies_overrides_and_keeps_unset():
    m = resolve("brick", {"brick": {"tensile": 1e5, "density": None}, "glass": {"density": 1.0}})
    assert m.tensile == 1e5 and m.density == PRESETS["brick"].density
    assert resolve("brick", None) is PRESETS["brick"]


def test_new_material_from_a_base_preset():
    m = resolve("old_brick", {"old_brick": {"base": "brick", "tensile": 2e4, "shear": None}})
    assert m.name == "old_brick" and m.tensile == 2e4
    assert m.shear == PRESETS["brick"].shear and m.ade20k == PRESETS["brick"].ade20k
    with pytest.raises(UserError, match="materials.weird.base 'cheese' is unknown"):
        resolve("weird", {"weird": {"base": "cheese"}})


@pytest.mark.parametrize(
    "name, overrides, words",
    [
        ("marble", None, "unknown material 'marble'"),
        ("wood", {"wood": {"colour": 1}}, "materials.wood.colour"),
        ("wood", {"wood": {"density": -5}}, "> 0"),
        ("wood", {"wood": {"restitution": 2}}, "0..1"),
        ("wood", {"wood": {"shear": "strong"}}, "must be a number"),
    ],
)
def test_resolve_refuses_bad_input(name, overrides, words):
    with pytest.raises(UserError, match=words):
        resolve(name, overrides)

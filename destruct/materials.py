"""Material presets: density, contact coefficients, bond strengths, seg class and colour.

Light on purpose (stdlib only): the shot schema validates material names against
:data:`MATERIAL_NAMES` and ``destruct validate`` must answer fast.

Bond strengths are the stresses (Pa) at which a glue bond between two pieces of one material
fails in tension, shear and compression. Where a code gives no direct shear value, the shear
strength is the Mohr-Coulomb cohesion ``c = sqrt(f_c * f_t) / 2`` that reproduces both the
compressive and the tensile strength (the envelope through the uniaxial tension and
compression circles). Friction coefficients are static, dry, same material on same material;
restitution is a low, perceptual value for rubble (building materials bounce very little).

``ade20k`` is the 0-based index into the 150 classes of the MIT Scene Parsing benchmark
(ADE20K SceneParse150, ``objectInfo150.csv``), used by the seg pass and the seg ControlNet:
0 wall, 1 building, 8 windowpane, 32 fence, 93 pole. The 150 classes have no
"wood" or "metal"; the nearest object classes that the seg ControlNet draws in those materials
are used (a fence is mostly timber; a pole is mostly steel).

Colours are scene-linear Rec.709 albedos (not sRGB); ``interior_color`` is the freshly broken
inside (lighter, rougher concrete and brick, bright wood, bare steel).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from destruct.errors import UserError


@dataclass(frozen=True)
class Material:
    """A material preset. SI units."""

    name: str
    density: float  # kg/m^3
    friction: float  # static Coulomb coefficient, dimensionless
    restitution: float  # 0..1
    tensile: float  # bond strength in tension [Pa]
    shear: float  # bond strength in shear [Pa]
    compressive: float  # bond strength in compression [Pa]
    ade20k: int  # 0-based SceneParse150 class index
    color: tuple[float, float, float]  # scene-linear base colour
    interior_color: tuple[float, float, float]  # scene-linear colour of fracture faces


def _cohesion(compressive: float, tensile: float) -> float:
    """Mohr-Coulomb cohesion [Pa] from the uniaxial compressive and tensile strengths."""
    return math.sqrt(compressive * tensile) / 2.0


# Sources (values are characteristic / mean values, rounded):
# [EN1991]  EN 1991-1-1:2002 Annex A, Tables A.1 and A.4: unit weights of construction materials
#           (normal-weight concrete 24 kN/m^3, reinforced 25 kN/m^3, steel 77-78.5 kN/m^3).
# [EN1992]  EN 1992-1-1:2004 Table 3.1: C30/37 concrete, f_ck = 30 MPa, f_ctm = 2.9 MPa;
#           section 6.2.5: interface friction mu = 0.6 (smooth) .. 0.7 (rough).
# [EN1993]  EN 1993-1-1:2005 Table 3.1: S355 steel, f_y = 355 MPa; 6.2.6: shear yield f_y/sqrt(3).
# [EN1996]  EN 1996-1-1:2005 3.6.1 (f_k = K f_b^0.7 f_m^0.3 with K = 0.55, f_b = 20 MPa clay units,
#           f_m = 10 MPa mortar: about 9 MPa), 3.6.2 (initial shear strength f_vk0 = 0.3 MPa for
#           clay units in M10-M20 mortar), 3.6.3 (flexural strength f_xk2 about 0.4 MPa).
# [EN338]   EN 338:2016 Table 1: C24 softwood, f_t,0,k = 14.5 MPa, f_c,0,k = 21 MPa,
#           f_v,k = 4.0 MPa, mean density 420 kg/m^3.
# [EN572]   EN 572-1:2012: soda-lime float glass, density 2500 kg/m^3, characteristic bending
#           strength f_g,k = 45 MPa; compressive strength about 1000 MPa (Glass in Building,
#           Button & Pye, 1993).
# [ETB]     The Engineering ToolBox, "Friction and Friction Coefficients" (static, dry, clean):
#           glass-glass 0.9-1.0, wood-wood 0.25-0.5, mild steel-mild steel 0.74, brick/masonry 0.6-0.7.
PRESETS: dict[str, Material] = {
    "concrete": Material(
        name="concrete",
        density=2400.0,  # [EN1991]
        friction=0.6,  # [EN1992] 6.2.5
        restitution=0.1,
        tensile=2.9e6,  # [EN1992] f_ctm of C30/37
        shear=_cohesion(30e6, 2.9e6),  # Mohr-Coulomb, about 4.7 MPa
        compressive=30e6,  # [EN1992] f_ck of C30/37
        ade20k=1,  # building
        color=(0.30, 0.29, 0.27),
        interior_color=(0.42, 0.40, 0.36),
    ),
    "reinforced_concrete": Material(
        name="reinforced_concrete",
        density=2500.0,  # [EN1991]
        friction=0.7,  # [EN1992] 6.2.5, rough
        restitution=0.1,
        # Smeared tension: concrete f_ctm plus 1 % of B500 rebar (rho * f_yk = 0.01 * 500 MPa).
        tensile=2.9e6 + 0.01 * 500e6,
        shear=_cohesion(30e6, 2.9e6 + 0.01 * 500e6),  # about 7.7 MPa
        compressive=30e6,  # [EN1992]
        ade20k=1,  # building: ADE20K labels a building's frame "building", not "column"
        color=(0.26, 0.26, 0.25),
        interior_color=(0.38, 0.36, 0.33),
    ),
    "brick": Material(
        name="brick",
        density=1900.0,  # [EN1991] clay brick masonry (19 kN/m^3)
        friction=0.65,  # [ETB] masonry
        restitution=0.1,
        tensile=0.4e6,  # [EN1996] 3.6.3 flexural strength, failure parallel to bed joints
        shear=0.3e6,  # [EN1996] 3.6.2 initial shear strength f_vk0
        compressive=9e6,  # [EN1996] 3.6.1
        ade20k=0,  # wall
        color=(0.33, 0.10, 0.06),
        interior_color=(0.45, 0.17, 0.10),
    ),
    "glass": Material(
        name="glass",
        density=2500.0,  # [EN572]
        friction=0.9,  # [ETB]
        restitution=0.3,
        tensile=45e6,  # [EN572] f_g,k
        shear=_cohesion(1000e6, 45e6),  # about 106 MPa
        compressive=1000e6,  # Button & Pye
        ade20k=8,  # windowpane
        color=(0.50, 0.60, 0.62),
        interior_color=(0.62, 0.72, 0.74),
    ),
    "wood": Material(
        name="wood",
        density=420.0,  # [EN338] C24 mean
        friction=0.4,  # [ETB]
        restitution=0.3,
        tensile=14.5e6,  # [EN338] parallel to grain
        shear=4.0e6,  # [EN338]
        compressive=21e6,  # [EN338] parallel to grain
        ade20k=32,  # fence
        color=(0.30, 0.16, 0.07),
        interior_color=(0.55, 0.36, 0.17),
    ),
    "steel": Material(
        name="steel",
        density=7850.0,  # [EN1991]
        friction=0.74,  # [ETB]
        restitution=0.3,
        tensile=355e6,  # [EN1993] f_y of S355
        shear=355e6 / math.sqrt(3.0),  # [EN1993] 6.2.6 (von Mises), about 205 MPa
        compressive=355e6,  # [EN1993]
        ade20k=93,  # pole
        color=(0.35, 0.36, 0.38),
        interior_color=(0.56, 0.56, 0.57),
    ),
}

#: The closed set of material names a shot may use, in a stable order (the material index
#: stored in fracture/pieces.npz is an index into the run's own ``material_names``).
MATERIAL_NAMES: tuple[str, ...] = tuple(PRESETS)

#: Keys of ``[materials.<name>]`` a shot may override.
OVERRIDABLE = ("density", "friction", "restitution", "tensile", "shear", "compressive")


def _as_dict(overrides: Any) -> dict[str, Any]:
    """A ``[materials.<name>]`` table as a plain dict (accepts a mapping or a pydantic model)."""
    if overrides is None:
        return {}
    if hasattr(overrides, "model_dump"):
        return overrides.model_dump()
    if isinstance(overrides, Mapping):
        return dict(overrides)
    raise UserError(
        f"materials overrides must be a table of numbers, got {type(overrides).__name__}"
    )


def resolve(name: str, overrides: Mapping[str, Any] | None = None) -> Material:
    """The material ``name`` with the shot's ``[materials.<name>]`` overrides applied.

    ``overrides`` maps material names to tables ``{base, density, friction, restitution,
    tensile, shear, compressive}``; a key that is missing or ``None`` keeps the base value.
    ``name`` is a preset, or a new name whose table gives ``base`` (the preset it starts from,
    which also gives its seg class and colours).
    """
    table = _as_dict((overrides or {}).get(name))
    base_name = table.pop("base", None) or name
    if base_name not in PRESETS:
        if base_name != name:
            raise UserError(
                f"materials.{name}.base {base_name!r} is unknown; allowed: {', '.join(MATERIAL_NAMES)}"
            )
        raise UserError(
            f"unknown material {name!r}; allowed: {', '.join(MATERIAL_NAMES)}, or a "
            f"[materials.{name}] table with base = one of them"
        )
    changes: dict[str, Any] = {"name": name} if name != base_name else {}
    for key, value in table.items():
        if value is None:
            continue
        if key not in OVERRIDABLE:
            raise UserError(
                f"materials.{name}.{key} is not a material property; allowed: {', '.join(OVERRIDABLE)}"
            )
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise UserError(f"materials.{name}.{key} must be a number, got {value!r}") from None
        positive = key in ("density", "tensile", "shear", "compressive")
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            bound = "> 0" if positive else ">= 0"
            raise UserError(
                f"materials.{name}.{key} must be a finite number {bound}, got {value!r}"
            )
        if key == "restitution" and v > 1:
            raise UserError(f"materials.{name}.restitution must be within 0..1, got {value!r}")
        changes[key] = v
    return replace(PRESETS[base_name], **changes) if changes else PRESETS[base_name]

"""Procedural buildings: a frame of columns, beams and floor slabs with walls and windows.

Every element is a watertight part (:class:`Part`) that touches its neighbours face to face and
never overlaps them, so the fracture stage can bond touching faces and the volumes add up:

- columns stand on the ground (storey 0) or on the slab below and stop under the slab above;
- beams run between the side faces of neighbouring columns, under the slab;
- a slab covers the whole footprint (to the columns' outer faces) at the top of each storey;
- exterior walls fill each facade bay between the columns, from the floor to the beam above,
  with a centred window opening filled by a glass pane (a thin box in the wall's mid-plane);
- interior walls (optional) fill the interior grid lines along z, without openings.

Y up, metres, standing on y = 0; the column grid lines are x = i * bay and z = j * bay, so the
corner column is centred on the origin and the building extends along +x and +z (the
default shot's charges sit on the grid lines of the z = 0 face). Coordinates are built from
exact sums of the given dimensions, so touching faces are exactly coplanar.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import trimesh

from destruct.errors import UserError

if TYPE_CHECKING:
    from destruct.shot import Building

#: Element kinds; imported meshes are "part".
KINDS = ("column", "beam", "slab", "wall", "window", "part")

# Member sizes [m] (a typical reinforced-concrete office frame).
COLUMN_WIDTH = 0.4
BEAM_WIDTH = 0.3
BEAM_DEPTH = 0.45
SLAB_THICKNESS = 0.2
WALL_THICKNESS = 0.2
INTERIOR_WALL_THICKNESS = 0.12
GLASS_THICKNESS = 0.02


@dataclass
class Part:
    """One watertight element before fracture.

    ``mesh`` is in world space (Y up, metres); ``material`` is a preset name of
    :mod:`destruct.materials`; ``name`` is ``<kind>_<k>`` (e.g. ``column_03``).
    """

    name: str
    kind: str
    material: str
    mesh: trimesh.Trimesh


def box_mesh(lo, hi) -> trimesh.Trimesh:
    """An axis-aligned box with corners exactly ``lo`` and ``hi`` ((3,) float), outward faces."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    corners = np.array(
        [[(hi if (k >> a) & 1 else lo)[a] for a in range(3)] for k in range(8)], dtype=np.float64
    )
    # corner k has bit a set when it sits at hi along axis a
    faces = np.array(
        [
            [0, 4, 6], [0, 6, 2],  # x = lo
            [1, 3, 7], [1, 7, 5],  # x = hi
            [0, 1, 5], [0, 5, 4],  # y = lo
            [2, 6, 7], [2, 7, 3],  # y = hi
            [0, 2, 3], [0, 3, 1],  # z = lo
            [4, 5, 7], [4, 7, 6],  # z = hi
        ],
        dtype=np.int64,
    )  # fmt: skip
    return trimesh.Trimesh(corners, faces, process=False)


def _box_minus_box(outer: tuple, hole: tuple) -> trimesh.Trimesh:
    """``outer`` box with the ``hole`` box (which pierces it) removed, via manifold3d."""
    import manifold3d as m3

    def man(lo_hi):
        lo, hi = (np.asarray(v, dtype=np.float64) for v in lo_hi)
        return m3.Manifold.cube(hi - lo).translate(lo)

    mesh = (man(outer) - man(hole)).to_mesh64()
    return trimesh.Trimesh(
        np.asarray(mesh.vert_properties[:, :3], dtype=np.float64),
        np.asarray(mesh.tri_verts, dtype=np.int64),
        process=False,
    )


def element_count(
    floors: int, bays_x: int, bays_z: int, *, windows: bool = True, interior_walls: bool = False
) -> int:
    """How many parts :func:`build_procedural` makes (known before building them)."""
    columns = (bays_x + 1) * (bays_z + 1)
    beams = bays_x * (bays_z + 1) + bays_z * (bays_x + 1)
    facade = 2 * (bays_x + bays_z)
    inner = (bays_x - 1) * bays_z if interior_walls else 0
    return floors * (columns + beams + 1 + facade * (2 if windows else 1) + inner)


def build_procedural(
    *,
    floors: int = 6,
    bays_x: int = 3,
    bays_z: int = 2,
    bay: float = 4.0,
    story: float = 3.0,
    windows: bool = True,
    interior_walls: bool = False,
    material: str = "concrete",
    materials: Mapping[str, str] | None = None,
    max_parts: int = 100_000,
) -> list[Part]:
    """The parts of a frame building (see the module docstring), Y up, standing on y = 0.

    ``bay`` is the column spacing [m] along x and z, ``story`` the floor-to-floor height [m];
    ``materials`` maps an element kind (column, beam, slab, wall, window) to a material name
    and falls back to ``material`` (names are checked when the fracture resolves them).
    """
    for key, value, lo in (("floors", floors, 1), ("bays_x", bays_x, 1), ("bays_z", bays_z, 1)):
        if int(value) != value or value < lo or value > 200:
            raise UserError(f"building.procedural.{key} must be an integer 1..200, got {value!r}")
    min_story = SLAB_THICKNESS + BEAM_DEPTH + 1.0
    if not np.isfinite(story) or story < min_story or story > 20:
        raise UserError(
            f"building.procedural.story must be {min_story:.2f}..20 m (room for slab, beam and "
            f"1 m of wall), got {story!r}"
        )
    if not np.isfinite(bay) or bay < COLUMN_WIDTH + 0.5 or bay > 50:
        raise UserError(
            f"building.procedural.bay must be {COLUMN_WIDTH + 0.5:.1f}..50 m, got {bay!r}"
        )
    floors, bays_x, bays_z = int(floors), int(bays_x), int(bays_z)
    count = element_count(floors, bays_x, bays_z, windows=windows, interior_walls=interior_walls)
    if count > max_parts:
        raise UserError(
            f"building.procedural: {floors} floors of {bays_x} x {bays_z} bays make {count} "
            f"elements, more than the {max_parts}-piece limit (every element is at least one "
            "piece); use fewer floors or bays"
        )
    mat = {k: (materials or {}).get(k) or material for k in KINDS[:5]}

    c2 = COLUMN_WIDTH / 2
    gx = np.arange(bays_x + 1) * bay  # column grid lines
    gz = np.arange(bays_z + 1) * bay
    counters = dict.fromkeys(KINDS, 0)
    parts: list[Part] = []

    def add(kind: str, mesh: trimesh.Trimesh) -> None:
        parts.append(Part(f"{kind}_{counters[kind]:02d}", kind, mat[kind], mesh))
        counters[kind] += 1

    def wall(axis: int, line: float, a0: float, a1: float, y0: float, y1: float, t: float, hole):
        """A wall panel spanning [a0, a1] along ``axis`` (0 = x, 2 = z) on the grid ``line``."""
        other = 2 - axis
        lo, hi = np.zeros(3), np.zeros(3)
        lo[axis], hi[axis] = a0, a1
        lo[1], hi[1] = y0, y1
        lo[other], hi[other] = line - t / 2, line + t / 2
        if not hole:
            add("wall", box_mesh(lo, hi))
            return
        h = y1 - y0
        w = a1 - a0
        wlo, whi = lo.copy(), hi.copy()
        wlo[axis], whi[axis] = a0 + 0.25 * w, a1 - 0.25 * w
        wlo[1], whi[1] = y0 + 0.35 * h, y0 + 0.85 * h
        # the opening pierces the wall; the pane fills it exactly in the mid-plane
        plo, phi = wlo.copy(), whi.copy()
        wlo[other], whi[other] = lo[other] - 1.0, hi[other] + 1.0
        add("wall", _box_minus_box((lo, hi), (wlo, whi)))
        plo[other], phi[other] = line - GLASS_THICKNESS / 2, line + GLASS_THICKNESS / 2
        add("window", box_mesh(plo, phi))

    for f in range(floors):
        y0 = f * story  # top of the slab below (or the ground)
        y_slab = (f + 1) * story - SLAB_THICKNESS  # underside of the slab above
        y_beam = y_slab - BEAM_DEPTH  # underside of the beams
        for x in gx:
            for z in gz:
                add("column", box_mesh((x - c2, y0, z - c2), (x + c2, y_slab, z + c2)))
        b2 = BEAM_WIDTH / 2
        for z in gz:
            for x0, x1 in itertools.pairwise(gx):
                add("beam", box_mesh((x0 + c2, y_beam, z - b2), (x1 - c2, y_slab, z + b2)))
        for x in gx:
            for z0, z1 in itertools.pairwise(gz):
                add("beam", box_mesh((x - b2, y_beam, z0 + c2), (x + b2, y_slab, z1 - c2)))
        add(
            "slab",
            box_mesh((gx[0] - c2, y_slab, gz[0] - c2), (gx[-1] + c2, (f + 1) * story, gz[-1] + c2)),
        )
        for z in (gz[0], gz[-1]):
            for x0, x1 in itertools.pairwise(gx):
                wall(0, z, x0 + c2, x1 - c2, y0, y_beam, WALL_THICKNESS, windows)
        for x in (gx[0], gx[-1]):
            for z0, z1 in itertools.pairwise(gz):
                wall(2, x, z0 + c2, z1 - c2, y0, y_beam, WALL_THICKNESS, windows)
        if interior_walls:
            for x in gx[1:-1]:
                for z0, z1 in itertools.pairwise(gz):
                    wall(2, x, z0 + c2, z1 - c2, y0, y_beam, INTERIOR_WALL_THICKNESS, False)
    return parts


def building_from_shot(building: Building) -> list[Part]:
    """The parts of ``shot.building.procedural`` (the shot's building section)."""
    p = building.procedural
    return build_procedural(
        floors=p.floors,
        bays_x=p.bays_x,
        bays_z=p.bays_z,
        bay=p.bay,
        story=p.story,
        windows=bool(p.windows),
        interior_walls=bool(p.interior_walls),
        material=building.material,
        materials=_kind_materials(building.materials),
    )


def _kind_materials(materials) -> dict[str, str]:
    """``building.materials`` (a dict or a pydantic model) as a plain {kind: name} dict."""
    if materials is None:
        return {}
    if hasattr(materials, "model_dump"):
        materials = materials.model_dump()
    return {k: v for k, v in dict(materials).items() if v is not None}

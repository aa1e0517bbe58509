"""Mesh import and repair: a glb/gltf/obj/ply/stl file -> watertight parts in Y-up metres.

``load_parts`` reads the file through trimesh (keeping the scene's nodes), applies ``scale`` and
the ``up`` axis, splits every node into connected components, keeps cavities with the solid
that encloses them (a hollow box stays one hollow part), repairs components that are not closed
volumes with pymeshfix, removes overlaps between parts (a later part loses what an earlier one
already fills), and recentres the whole on the origin, standing on y = 0. Nothing is dropped
silently: every repair, flip and overlap is listed in the report with volumes before and after.
A mesh that cannot be made a volume fails with one line naming the file, the part and the fix.

Also the small mesh utilities the fracture stage shares (:func:`points_inside`,
:func:`box_pairs`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from destruct.building import Part
from destruct.errors import UserError

MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl")
#: Z-up -> Y-up: (x, y, z) -> (x, z, -y), a rotation of -90 degrees about x (right-handed).
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
#: Relative volume below which an overlap between parts or a mesh's volume counts as none.
VOLUME_TOL = 1e-9


#: Above this many point-triangle pairs, :func:`points_inside` casts rays through a grid
#: instead of summing winding numbers over every triangle. Winding numbers cost about 0.25 us a
#: pair, the rays about 30 us a point whatever the mesh: they break even near 1M pairs (80
#: triangles x 10k points: 0.34 s and 0.31 s); at 20M pairs (a 16k-triangle tube's 1400 seed
#: candidates) the winding numbers took 6.5 s, the rays 0.23 s. The default building's parts
#: stay under 25k pairs.
WINDING_MAX_PAIRS = 1_000_000


#: the sizes a building may have after building.scale [m] (a wrong scale is the usual cause)
MIN_SIZE, MAX_SIZE = 0.1, 5000.0


def points_inside(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """(n,) bool: ``points`` ((n, 3)) inside the closed ``mesh``.

    Few triangles x points: the generalised winding number (Jacobson et al. 2013), exact and
    robust. Many (an imported high-poly mesh): the parity of +x rays through a (y, z) grid
    of the triangles, O(points x triangles per cell); a point whose ray grazes an edge or
    vertex exactly may be misjudged, which is harmless for its uses (seeds and sampling).
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    tri = np.asarray(mesh.triangles, dtype=np.float64)
    if len(points) * len(tri) <= WINDING_MAX_PAIRS:
        return _winding_inside(tri, points)
    return _ray_parity_inside(tri, points)


def _winding_inside(tri: np.ndarray, points: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    out = np.zeros(len(points), dtype=bool)
    step = max(1, chunk // max(len(tri), 1))
    for s in range(0, len(points), step):
        p = points[s : s + step, None, :]
        a, b, c = tri[None, :, 0, :] - p, tri[None, :, 1, :] - p, tri[None, :, 2, :] - p
        la, lb, lc = (np.linalg.norm(v, axis=2) for v in (a, b, c))
        det = np.einsum("pfi,pfi->pf", a, np.cross(b, c))
        den = (
            la * lb * lc
            + np.einsum("pfi,pfi->pf", a, b) * lc
            + np.einsum("pfi,pfi->pf", b, c) * la
            + np.einsum("pfi,pfi->pf", c, a) * lb
        )
        # each triangle subtends 2 * atan2(det, den) steradians; winding = sum / (4 pi)
        out[s : s + step] = np.arctan2(det, den).sum(axis=1) > np.pi
    return out


def _ray_parity_inside(tri: np.ndarray, points: np.ndarray, cells: int = 64) -> np.ndarray:
    """Crossings of the ray from each point along +x with the triangles, counted per (y, z)
    grid cell (each triangle listed in every cell its (y, z) bounds touch)."""
    yz = tri[:, :, 1:]
    lo = np.minimum(yz.reshape(-1, 2).min(0), points[:, 1:].min(0))
    size = np.maximum(np.maximum(yz.reshape(-1, 2).max(0), points[:, 1:].max(0)) - lo, 1e-12)
    step = size / cells

    def cell(v):
        return np.clip(((v - lo) / step).astype(np.int64), 0, cells - 1)

    c0, c1 = cell(yz.min(axis=1)), cell(yz.max(axis=1))
    span = (c1 - c0 + 1).prod(axis=1)
    t_of = np.repeat(np.arange(len(tri)), span)
    k = np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span)
    width = np.repeat(c1[:, 1] - c0[:, 1] + 1, span)
    ty = np.repeat(c0[:, 0], span) + k // width
    tz = np.repeat(c0[:, 1], span) + k % width
    t_cell = ty * cells + tz
    order = np.argsort(t_cell, kind="stable")
    t_of, t_cell = t_of[order], t_cell[order]
    pc = cell(points[:, 1:])
    p_cell = pc[:, 0] * cells + pc[:, 1]
    count = np.zeros(len(points), dtype=np.int64)
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    for cid in np.unique(p_cell):
        ts = t_of[np.searchsorted(t_cell, cid) : np.searchsorted(t_cell, cid, side="right")]
        if len(ts) == 0:
            continue
        pi = np.flatnonzero(p_cell == cid)
        py, pz = points[pi, 1:2], points[pi, 2:3]  # (m, 1)
        ay, az, by, bz, cy, cz = a[ts, 1], a[ts, 2], b[ts, 1], b[ts, 2], c[ts, 1], c[ts, 2]
        e0 = (by - ay) * (pz - az) - (bz - az) * (py - ay)
        e1 = (cy - by) * (pz - bz) - (cz - bz) * (py - by)
        e2 = (ay - cy) * (pz - cz) - (az - cz) * (py - cy)
        hit = ((e0 > 0) & (e1 > 0) & (e2 > 0)) | ((e0 < 0) & (e1 < 0) & (e2 < 0))
        # x where the ray meets the triangle's plane, from its barycentric weights
        area = e0 + e1 + e2
        with np.errstate(invalid="ignore", divide="ignore"):
            x = (e1 * a[ts, 0] + e2 * b[ts, 0] + e0 * c[ts, 0]) / area
        count[pi] += (hit & (x > points[pi, 0:1])).sum(axis=1)
    return count % 2 == 1


def box_pairs(lo: np.ndarray, hi: np.ndarray, tol: float = 0.0) -> np.ndarray:
    """(k, 2) sorted index pairs i < j of boxes [lo, hi] ((n, 3)) that overlap within ``tol``
    (sweep and prune along x, vectorised)."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    n = len(lo)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    order = np.argsort(lo[:, 0], kind="stable")
    lo_s, hi_s = lo[order], hi[order]
    end = np.searchsorted(lo_s[:, 0], hi_s[:, 0] + tol, side="right")
    count = np.maximum(end - np.arange(n) - 1, 0)
    i = np.repeat(np.arange(n), count)
    j = i + 1 + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
    ok = np.all((lo_s[i] <= hi_s[j] + tol) & (lo_s[j] <= hi_s[i] + tol), axis=1)
    return np.sort(np.column_stack([order[i[ok]], order[j[ok]]]), axis=1)


def to_manifold(mesh: trimesh.Trimesh):
    """A manifold3d Manifold of ``mesh`` (float64); empty with a status when not a volume."""
    import manifold3d as m3

    return m3.Manifold(
        m3.Mesh64(
            vert_properties=np.array(mesh.vertices, dtype=np.float64, order="C"),
            tri_verts=np.array(mesh.faces, dtype=np.uint64, order="C"),
        )
    )


def _clean_name(name: str) -> str:
    """A node name usable in piece names (no dots: they separate element and piece)."""
    s = re.sub(r"[^A-Za-z0-9_-]+", "_", str(name)).strip("_")
    return s or "part"


def _read_scene(path: Path, ignored: list) -> list[tuple[str, trimesh.Trimesh]]:
    """(node name, mesh in file coordinates) for every triangle mesh of the file; nodes that
    are not triangle meshes (points, lines, empty) are listed in ``ignored``."""
    if not path.is_file():
        raise UserError(
            f"building.mesh: {path} does not exist; check the path (relative to the shot file)"
        )
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise UserError(
            f"building.mesh: {path} has an unsupported extension; allowed: {', '.join(MESH_SUFFIXES)}"
        )
    if path.stat().st_size == 0:
        raise UserError(f"building.mesh: {path} is empty (0 bytes); export the mesh again")
    try:
        # process=False: NaN vertices must reach our check (trimesh would drop them silently);
        # split_objects: every OBJ object is its own node, as in glTF
        extra = (
            {"split_objects": True, "group_material": False}
            if path.suffix.lower() == ".obj"
            else {}
        )
        scene = trimesh.load(str(path), force="scene", process=False, **extra)
    except Exception as e:  # noqa: BLE001 (trimesh raises many types for a corrupt file)
        raise UserError(
            f"building.mesh: {path} is not a readable {path.suffix} mesh ({type(e).__name__}: {e}); "
            "export it again as glb, obj, ply or stl"
        ) from None
    out: list[tuple[str, trimesh.Trimesh]] = []
    for node in sorted(scene.graph.nodes_geometry):  # the graph's own order is not stable
        transform, geom_name = scene.graph[node]
        geom = scene.geometry.get(geom_name)
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            ignored.append({"node": str(node), "type": type(geom).__name__})
            continue
        mesh = geom.copy()
        mesh.apply_transform(transform)
        out.append((str(node), mesh))
    if not out:
        raise UserError(
            f"building.mesh: {path} holds no triangle mesh (only points, lines or nothing); "
            "export the building as a closed triangle mesh"
        )
    return out


def _repair(mesh: trimesh.Trimesh) -> trimesh.Trimesh | None:
    """pymeshfix repair of one component; None when the result is still not a volume."""
    import pymeshfix

    fix = pymeshfix.MeshFix(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int32))
    fix.repair(joincomp=False, remove_smallest_components=False)
    out = trimesh.Trimesh(np.asarray(fix.points), np.asarray(fix.faces), process=True)
    if len(out.faces) == 0 or not out.is_watertight or not out.is_winding_consistent:
        return None
    if out.volume < 0:
        out.invert()
    return out


def _capped_volume(mesh: trimesh.Trimesh) -> float:
    """|volume| of an open surface with each hole closed by a fan from its boundary's centroid
    (a flat cap for a planar hole), the figure reported before repair. trimesh's volume of an
    open surface depends on where it sits: a unit box missing its x = 10 side has 11 m^3."""
    v = np.asarray(mesh.vertices, dtype=np.float64)
    v = v - v.mean(axis=0)
    tri = v[mesh.faces]
    total = np.einsum("ij,ij->", tri[:, 0], np.cross(tri[:, 1], tri[:, 2]))
    edges = np.asarray(mesh.edges)  # (3F, 2) directed, as each face runs
    boundary = edges[trimesh.grouping.group_rows(mesh.edges_sorted, require_count=1)]
    loops = trimesh.graph.connected_components(boundary)
    if loops:
        label = np.zeros(len(v), dtype=np.int64)
        for k, loop in enumerate(loops):
            label[loop] = k
        centroid = np.array([v[loop].mean(axis=0) for loop in loops])[label[boundary[:, 0]]]
        # each hole's cap runs its boundary edges (a, b) backwards: triangles (centroid, b, a)
        a, b = v[boundary[:, 0]], v[boundary[:, 1]]
        total += np.einsum("ij,ij->", centroid, np.cross(b, a))
    return abs(float(total)) / 6.0


def _solids(name: str, mesh: trimesh.Trimesh, path: Path, report: dict) -> list[trimesh.Trimesh]:
    """One node's connected components as closed volumes, with their cavities kept inside."""
    with np.errstate(invalid="ignore", divide="ignore"):  # trimesh's centre of a flat shell
        return _solids_of(name, mesh, path, report)


def _solids_of(name: str, mesh: trimesh.Trimesh, path: Path, report: dict) -> list[trimesh.Trimesh]:
    # repair=False: trimesh would otherwise fill holes silently, unreported
    comps = mesh.split(only_watertight=False, repair=False) if len(mesh.faces) else []
    closed: list[trimesh.Trimesh] = []
    for k, comp in enumerate(comps):
        if comp.is_watertight and comp.is_winding_consistent:
            closed.append(comp)
            continue
        before = _capped_volume(comp)
        fixed = _repair(comp)
        if fixed is None:
            raise UserError(
                f"building.mesh: {path}: part {name!r} (component {k}) is an open or "
                "non-manifold surface that pymeshfix cannot close; close its holes in your "
                "modelling tool or export it as a solid"
            )
        report["repaired"].append(
            {
                "part": name,
                "component": k,
                "volume_before": before,
                "volume_after": float(fixed.volume),
            }
        )
        closed.append(fixed)
    tiny = VOLUME_TOL * float(np.ptp(mesh.vertices, axis=0).max()) ** 3
    for c in [c for c in closed if abs(c.volume) <= tiny]:
        report["degenerate"].append(
            {"part": name, "faces": len(c.faces), "volume": float(c.volume)}
        )
    solids = [c for c in closed if c.volume > tiny]
    for c in (c for c in closed if c.volume < -tiny):
        holder = [s for s in solids if points_inside(s, c.vertices[:1])[0]]
        if holder:  # an inward-facing shell inside a solid: its cavity
            smallest = min(holder, key=lambda s: s.volume)
            solids[solids.index(smallest)] = trimesh.util.concatenate([smallest, c])
        else:  # an inside-out solid
            c = c.copy()
            c.invert()
            report["flipped"].append({"part": name, "volume": float(c.volume)})
            solids.append(c)
    return solids


def _remove_overlaps(parts: list[Part], report: dict) -> list[Part]:
    """Make parts disjoint: each part loses what earlier parts already fill (manifold3d)."""
    mans = [to_manifold(p.mesh) for p in parts]
    for i, m in enumerate(mans):
        if m.is_empty():
            raise UserError(
                f"building.mesh: part {parts[i].name!r} is not a valid volume after repair "
                f"({m.status()}); remove self-intersections in your modelling tool"
            )
    bounds = np.array([p.mesh.bounds for p in parts])
    for i, j in box_pairs(bounds[:, 0], bounds[:, 1]):
        common = (mans[i] ^ mans[j]).volume()
        if common > VOLUME_TOL * min(mans[i].volume(), mans[j].volume()):
            before = mans[j].volume()
            mans[j] = mans[j] - mans[i]
            report["overlaps"].append(
                {"part": parts[j].name, "with": parts[i].name, "volume_before": before,
                 "volume_after": mans[j].volume()}
            )  # fmt: skip
            mesh = mans[j].to_mesh64()
            parts[j].mesh = trimesh.Trimesh(
                np.array(mesh.vert_properties[:, :3], np.float64),
                np.asarray(mesh.tri_verts, np.int64),
                process=False,
            )
    return [p for p, m in zip(parts, mans) if m.volume() > 0]


def load_parts(
    path: str | Path,
    *,
    scale: float = 1.0,
    up: str = "y",
    material: str = "concrete",
    materials: Mapping[str, str] | None = None,
    max_parts: int = 100_000,
) -> tuple[list[Part], np.ndarray, dict[str, Any]]:
    """Parts of a mesh file, Y up, metres, recentred: (parts, origin (3,), report).

    ``origin`` is what was subtracted (after scale and up) so the bounding box is centred on
    x = z = 0 and stands on y = 0. Parts are named ``<node>_<k>`` with kind ``part`` and the
    material ``materials["part"]`` (or a node's own name as key), else ``material``.
    """
    path = Path(path)
    if up not in ("y", "z"):
        raise UserError(f"building.up must be 'y' or 'z', got {up!r}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise UserError(f"building.scale must be a finite number > 0, got {scale!r}")
    report: dict[str, Any] = {
        "file": str(path),
        "repaired": [],
        "flipped": [],
        "overlaps": [],
        "degenerate": [],
        "ignored": [],
    }
    nodes = _read_scene(path, report["ignored"])
    materials = dict(materials or {})
    parts: list[Part] = []
    for node, mesh in nodes:
        if not np.all(np.isfinite(mesh.vertices)):
            raise UserError(
                f"building.mesh: {path}: node {node!r} has NaN or infinite vertex coordinates; "
                "fix or delete those vertices and export again"
            )
        v = np.asarray(mesh.vertices, dtype=np.float64) * float(scale)
        if up == "z":
            v = v @ Z_UP_TO_Y_UP.T
        mesh = trimesh.Trimesh(v, mesh.faces, process=True)
        name = _clean_name(node)
        mat = materials.get(name) or materials.get("part") or material
        for k, solid in enumerate(_solids(name, mesh, path, report)):
            parts.append(Part(f"{name}_{k:02d}", "part", mat, solid))
            if len(parts) > max_parts:
                raise UserError(
                    f"building.mesh: {path} splits into more than {max_parts} parts (the piece "
                    "limit); merge small parts or simplify the mesh"
                )
    if not parts:
        raise UserError(
            f"building.mesh: {path} has zero volume (a flat or degenerate surface); the building "
            "must be a closed solid"
        )
    report["volume_read"] = float(sum(p.mesh.volume for p in parts))
    parts = _remove_overlaps(parts, report)
    lo = np.min([p.mesh.bounds[0] for p in parts], axis=0)
    hi = np.max([p.mesh.bounds[1] for p in parts], axis=0)
    size = float(np.max(hi - lo))
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(
            f"building.mesh: {path} is {size:.3g} m across at building.scale = {scale:g}; a "
            f"building is {MIN_SIZE:g} to {MAX_SIZE:g} m: set building.scale to the file's units "
            "(0.01 for centimetres, 0.001 for millimetres)"
        )
    origin = np.array([(lo[0] + hi[0]) / 2, lo[1], (lo[2] + hi[2]) / 2])
    for p in parts:
        p.mesh = trimesh.Trimesh(p.mesh.vertices - origin, p.mesh.faces, process=False)
    report["parts"] = len(parts)
    report["volume"] = float(sum(p.mesh.volume for p in parts))
    return parts, origin, report

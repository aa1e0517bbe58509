"""Voronoi fracture of parts into pieces, the bond graph, and the ``fracture/`` artifact.

The ``prepare`` stage: shot -> parts (procedural building or imported mesh) -> seeds -> Voronoi
cells intersected exactly with each part (manifold3d) -> pieces (render mesh with interior-face
flags, convex collision hulls, mass properties) -> bonds between pieces that share a face (inside
a part and across touching parts) and, with ``sim.anchor_to_ground``, to the ground.

Pieces of one part come from that part's own seeds: the cell of seed ``i`` is the part's
bounding box (enlarged, so no cell face coincides with a part face) trimmed by the bisector
planes to ``i``'s Delaunay neighbours, then intersected with the part. A cell that cuts a
non-convex part into disconnected bits gives one piece per bit (a rigid piece is connected);
a bit much smaller than its neighbours (a sliver across a window) joins the neighbour it
shares the most area with. Faces that come from the cell (not from the part's surface) are
the interior faces. Seeds are blue noise (best-candidate) drawn from a density that is
higher near charges and ``fracture.detail`` points.

Bonds are found geometrically, so the same code bonds Voronoi neighbours and touching parts
(a column on a slab): two pieces are bonded when faces of theirs lie in one plane with
opposite normals and overlap; the bond's area is the exact area of that overlap (2D polygon
intersection), its point the overlap's centroid, its normal the first piece's outward normal.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import trimesh

from destruct.building import Part
from destruct.errors import UserError
from destruct.io import load_json, load_npz, save_json, save_npz
from destruct.materials import MATERIAL_NAMES, resolve
from destruct.meshio import points_inside, to_manifold

if TYPE_CHECKING:
    from destruct.shot import Shot
    from destruct.stages import StageContext

PIECES_FORMAT = "destruct.pieces/1"
BONDS_FORMAT = "destruct.bonds/1"
FRACTURE_FORMAT = "destruct.fracture/1"

#: Most pieces one shot may ask for (memory and simulation time grow linearly).
MAX_PIECES = 100_000
#: Seed-density factor near a charge: pieces within its radius are about this many times
#: smaller in volume than elsewhere.
CHARGE_DETAIL_FACTOR = 4.0
#: Convex parts with at most this many face planes are cut by half-space intersection.
HALFSPACE_MAX_PLANES = 256
#: A piece is given a compound of hulls when its convex hull is larger than itself by more
#: than this factor. Near 1: a hull that bulges out of its piece overlaps a neighbour's at
#: rest (a wall piece's hull across a window pane), which a solver pushes apart. Cutting
#: along concave-edge planes makes the compounds of the default building exact with about
#: 2 % more hulls than a loose 1.3 would give. 1.001 was not tight enough: a 0.5 m^3 wall
#: piece with a 1.0004 hull reached 2e-5 m^3 into its 0.08 m^3 window pane.
HULL_RATIO = 1.0001
#: Candidates per seed of best-candidate sampling, and the most seeds of one part it is used
#: for (it is O(n^2); larger parts take plain samples from the density).
SEED_CANDIDATES = 8
BEST_CANDIDATE_MAX = 4000
#: A bit smaller than this fraction of the median volume of the bits it touches in its part
#: is joined to its largest-contact neighbour (see ``_merge_slivers``).
SLIVER_FRACTION = 0.25
#: Most vertices of one collision hull (see simplify_hull). A piece cut from a finely
#: tessellated curved surface has a hull of hundreds of vertices, and the contact kernels'
#: cost grows with them: 200 pieces of a 2048-sided tower (hulls of up to 749 vertices)
#: simulated 12 frames in 129 s, against 14 s for a 64-sided tower; with hulls of 64 vertices
#: it is 18 s, and no hull is more than 2.6 mm inside its piece (its volume within 0.06 %).
#: PhysX caps a convex mesh at 255 vertices; Bullet advises under 100.
MAX_HULL_VERTS = 64
#: Most times a non-convex piece is halved to build its compound of hulls (2^depth hulls).
HULL_MAX_DEPTH = 3
#: Most candidate planes tried per halving (see ``_cut_planes``). Each try splits the piece,
#: so the search costs planes x piece size, and a piece of a finely tessellated concave
#: surface has two or three planes per facet (a 400-sided groove: 601; a piece of a 311k-face
#: tube: thousands, about 18 ms a try). 50 pieces of a 16k-triangle tube: 24 s with 32, 14 s
#: with 16, their hulls' excess over the piece 0.187 % instead of 0.176 % (median). The
#: default building's pieces have at most 8.
MAX_CUT_PLANES = 16
# Geometric tolerances [m]: coplanarity of touching faces, smallest bond area [m^2], ground.
PLANE_TOL = 1e-6
NORMAL_TOL = 1e-6
MIN_BOND_AREA = 1e-8
GROUND_TOL = 1e-6


# ----------------------------------------------------------------------------- data


@dataclass
class Piece:
    """One rigid piece. Arrays are world space at rest, float64, SI units."""

    name: str  # <element>.piece_<n>, e.g. column_03.piece_0012
    element: str  # the part it came from, e.g. column_03
    kind: str  # column, beam, slab, wall, window, part
    material: str  # preset name (destruct.materials)
    mesh: trimesh.Trimesh  # render mesh, world space
    interior: np.ndarray  # (F,) bool, True for faces made by fracture
    volume: float  # m^3
    mass: float  # kg
    com: np.ndarray  # (3,) centre of mass [m]
    inertia: np.ndarray  # (3, 3) inertia tensor about com, world axes [kg m^2]
    hulls: list[np.ndarray]  # convex collision hulls, each (k, 3) points [m]


@dataclass
class Bonds:
    """Glue bonds, structure of arrays. ``pairs[:, 1] == -1`` is a bond to the ground."""

    pairs: np.ndarray  # (B, 2) int32 piece indices
    points: np.ndarray  # (B, 3) f64 centroid of the shared face [m]
    normals: np.ndarray  # (B, 3) f64 unit normal from pairs[:, 0] towards pairs[:, 1]
    areas: np.ndarray  # (B,) f64 shared face area [m^2]
    tensile: np.ndarray  # (B,) f64 strength [Pa]
    shear: np.ndarray  # (B,) f64 strength [Pa]
    compressive: np.ndarray  # (B,) f64 strength [Pa]

    def __len__(self) -> int:
        return len(self.pairs)


@dataclass
class Scene:
    """The fractured scene: what ``destruct.prepare(shot)`` returns and ``fracture/`` holds."""

    pieces: list[Piece]
    bonds: Bonds
    input_volume: float  # m^3, the parts' volume before fracture (after repair)
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))  # subtracted from a mesh
    material_names: tuple[str, ...] = MATERIAL_NAMES
    # per part: name, kind, material, volume, pieces
    elements: list[dict[str, Any]] = field(default_factory=list)
    repair: dict[str, Any] = field(default_factory=dict)  # mesh import report
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase (not stored)

    @property
    def pieces_volume(self) -> float:
        return float(math.fsum(p.volume for p in self.pieces))

    @property
    def volume_error(self) -> float:
        """|sum of piece volumes - input volume| / input volume."""
        return abs(self.pieces_volume - self.input_volume) / max(self.input_volume, 1e-300)

    @property
    def ground_bonds(self) -> int:
        return int(np.count_nonzero(self.bonds.pairs[:, 1] < 0))


# ----------------------------------------------------------------------------- seeds


def seed_density(points: np.ndarray, detail: Sequence[tuple]) -> np.ndarray:
    """Relative seed density at ``points`` ((n, 3)): 1 far from detail points, ``factor``
    within ``radius`` of one, fading linearly back to 1 between one and two radii."""
    rho = np.ones(len(points))
    for position, radius, factor in detail:
        d = np.linalg.norm(points - np.asarray(position, dtype=np.float64), axis=1)
        w = np.clip(2.0 - d / float(radius), 0.0, 1.0)
        rho += (float(factor) - 1.0) * w
    return np.maximum(rho, 1e-2)  # factors < 1 (coarser) never make the density vanish


def _near_detail(lo: np.ndarray, hi: np.ndarray, detail: Sequence[tuple]) -> list[tuple]:
    """The detail points whose influence (2 radii) reaches the box [lo, hi]."""
    near = []
    for d in detail:
        p = np.asarray(d[0], dtype=np.float64)
        if np.linalg.norm(np.clip(p, lo, hi) - p) < 2.0 * float(d[1]) and float(d[2]) != 1.0:
            near.append(d)
    return near


def _sample_inside(part: Part, n: int, rng: np.random.Generator, detail: Sequence[tuple]):
    """``n`` points inside ``part`` with density proportional to :func:`seed_density`."""
    lo, hi = part.mesh.bounds
    near = _near_detail(lo, hi, detail)
    rho_max = 1.0 + sum(max(float(f) - 1.0, 0.0) for _, _, f in near)
    extent = np.prod(hi - lo)
    box = abs(part.mesh.volume - extent) <= 1e-12 * extent  # fills its bounding box
    out: list[np.ndarray] = []
    have = 0
    for _ in range(1000):
        m = max(64, int(2 * (n - have) * rho_max))
        cand = lo + (hi - lo) * rng.random((m, 3))
        keep = rng.random(m) * rho_max < seed_density(cand, near)
        cand = cand[keep]
        if not box:
            cand = cand[points_inside(part.mesh, cand)]
        out.append(cand[: n - have])
        have += len(out[-1])
        if have >= n:
            return np.concatenate(out)
    raise UserError(f"part {part.name}: cannot place seeds inside it (is it a closed volume?)")


def _scatter_seeds(part: Part, n: int, rng: np.random.Generator, detail: Sequence[tuple]):
    """``n`` Voronoi seeds inside ``part``: Mitchell's best-candidate sampling.

    Each seed is the best of ``SEED_CANDIDATES`` points drawn from the seed density: the one
    farthest from the seeds so far, the distance scaled by ``density^(1/3)`` (the local
    spacing). Blue noise rather than white: piece sizes are even and slivers from two nearly
    coincident seeds are rare, while pieces still shrink where the density is higher.
    O(n^2) per part, so parts with more than ``BEST_CANDIDATE_MAX`` seeds use plain samples.
    """
    if n <= 1 or n > BEST_CANDIDATE_MAX:
        return _sample_inside(part, n, rng, detail)
    k = SEED_CANDIDATES
    cand = _sample_inside(part, n * k, rng, detail).reshape(n, k, 3)
    lo, hi = part.mesh.bounds
    scale = np.cbrt(seed_density(cand.reshape(-1, 3), _near_detail(lo, hi, detail))).reshape(n, k)
    seeds = np.empty((n, 3))
    seeds[0] = cand[0, 0]
    for t in range(1, n):
        d2 = ((cand[t][:, None, :] - seeds[None, :t, :]) ** 2).sum(axis=2).min(axis=1)
        seeds[t] = cand[t, int(np.argmax(d2 * scale[t] ** 2))]
    return seeds


def weighted_volumes(parts: Sequence[Part], detail: Sequence[tuple], rng: np.random.Generator):
    """Each part's volume weighted by the seed density (Monte Carlo near detail points)."""
    out = np.empty(len(parts))
    for k, part in enumerate(parts):
        lo, hi = part.mesh.bounds
        near = _near_detail(lo, hi, detail)
        out[k] = part.mesh.volume
        if near:
            pts = _sample_inside(part, 256, rng, [])
            out[k] *= float(seed_density(pts, near).mean())
    return out


def allocate_seeds(weights: np.ndarray, n_pieces: int) -> np.ndarray:
    """Seeds per part: ``n_pieces`` split in proportion to ``weights`` (largest remainder),
    at least one per part. Parts whose share is below one get one seed and the others share
    the rest, so the total is ``max(n_pieces, len(weights))``."""
    w = np.asarray(weights, dtype=np.float64)
    fixed = np.zeros(len(w), dtype=bool)
    while True:
        left = n_pieces - np.count_nonzero(fixed)
        free = ~fixed
        share = np.where(free, left * w / max(w[free].sum(), 1e-300), 1.0)
        small = free & (share < 1.0)
        if left <= 0 or not small.any():
            break
        fixed |= small
    if left <= 0:
        return np.ones(len(w), dtype=np.int64)
    count = np.where(fixed, 1, np.floor(share)).astype(np.int64)
    rest = n_pieces - count.sum()
    if rest > 0:
        order = np.argsort(-np.where(fixed, -1.0, share - count), kind="stable")
        count[order[:rest]] += 1
    return count


# ----------------------------------------------------------------------------- cells


def _to_manifold(mesh: trimesh.Trimesh, name: str):
    m = to_manifold(mesh)
    if m.is_empty():
        raise UserError(f"part {name} is not a closed, consistently oriented volume ({m.status()})")
    return m.as_original()


def _neighbours(seeds: np.ndarray) -> list[np.ndarray]:
    """Each seed's Voronoi neighbours (Delaunay edges); all other seeds when there are few."""
    from scipy.spatial import Delaunay, QhullError

    n = len(seeds)
    if n > 4:
        try:
            indptr, ind = Delaunay(seeds).vertex_neighbor_vertices
            return [ind[indptr[i] : indptr[i + 1]] for i in range(n)]
        except QhullError:
            pass
    return [np.delete(np.arange(n), i) for i in range(n)]


@dataclass
class _Bit:
    """A connected bit of one cell of one part (or a bit with slivers merged into it: then
    several closed shells that touch), before mass properties."""

    shells: list[Any]  # manifold3d Manifolds, one per closed shell
    vertices: np.ndarray  # (V, 3) f64
    faces: np.ndarray  # (F, 3) int64
    interior: np.ndarray  # (F,) bool

    @property
    def volume(self) -> float:
        return float(math.fsum(m.volume() for m in self.shells))

    def joined(self, other: _Bit) -> _Bit:
        """This bit and ``other`` as one piece of two touching shells."""
        return _Bit(
            self.shells + other.shells,
            np.concatenate([self.vertices, other.vertices]),
            np.concatenate([self.faces, other.faces + len(self.vertices)]),
            np.concatenate([self.interior, other.interior]),
        )


def _bits_of(result, part_id: int) -> list[_Bit]:
    """Split a cell-part intersection into connected bits with interior-face flags."""
    bits = []
    for comp in result.decompose() if result.num_vert() else []:
        mesh = comp.to_mesh64()
        faces = np.asarray(mesh.tri_verts, dtype=np.int64)
        interior = np.ones(len(faces), dtype=bool)
        runs = np.asarray(mesh.run_index, dtype=np.int64) // 3
        for r, oid in enumerate(np.asarray(mesh.run_original_id)):
            if oid == part_id:
                interior[runs[r] : runs[r + 1]] = False
        verts = np.array(mesh.vert_properties[:, :3], dtype=np.float64)
        bits.append(_Bit([comp], verts, faces, interior))
    return bits


def _merge_slivers(groups: list[list[_Bit]], part_volume: float) -> list[_Bit]:
    """The bits of one part (``groups``: the bits of each cell), with slivers merged.

    A cell can reach around an opening in a non-convex part and leave a small bit on the far
    side, and a seed crowded by its neighbours can get a tiny cell. A bit smaller than
    ``SLIVER_FRACTION`` of the median volume of the bits it touches in the same part is merged
    into the one it shares the most area with, smallest first, so the simulation gets no
    tiny, light pieces next to heavy ones. Pieces that are small because the seed density is
    high (near a charge) have small neighbours too and stay. The merged piece keeps both
    closed shells (touching along the shared face, which is then inside the piece) and their
    hulls: a boolean union of two cells whose shared oblique face differs in the last bits
    can come out as two shells anyway. Volume is unchanged.
    """
    bits = [b for g in groups for b in g]
    if len(bits) < 2:
        return bits
    vol = [b.volume for b in bits]
    small = [i for i in range(len(bits)) if vol[i] < SLIVER_FRACTION * part_volume / len(groups)]
    if not small:
        return bits
    meshes = [_MeshOnly(trimesh.Trimesh(b.vertices, b.faces, process=False)) for b in bits]
    pairs, _, _, areas = find_bonds(meshes)
    shared: dict[int, dict[int, float]] = {}
    for (a, b), area in zip(pairs.tolist(), areas.tolist()):
        shared.setdefault(a, {})[b] = shared.get(a, {}).get(b, 0.0) + area
        shared.setdefault(b, {})[a] = shared.get(b, {}).get(a, 0.0) + area
    into: dict[int, int] = {}

    def alive(i: int) -> int:
        while i in into:
            i = into[i]
        return i

    for i in sorted(small, key=lambda i: vol[i]):
        touching: dict[int, float] = {}
        for j, area in shared.get(i, {}).items():
            if alive(j) != i:
                touching[alive(j)] = touching.get(alive(j), 0.0) + area
        if not touching or vol[i] >= SLIVER_FRACTION * float(
            np.median([bits[j].volume for j in touching])
        ):
            continue
        j = max(sorted(touching), key=lambda t: touching[t])
        bits[j] = bits[j].joined(bits[i])
        into[i] = j
        for k, area in shared.get(i, {}).items():  # j inherits i's contacts
            if k != j:
                shared.setdefault(j, {})[k] = shared.get(j, {}).get(k, 0.0) + area
    return [b for i, b in enumerate(bits) if i not in into]


@dataclass
class _MeshOnly:
    """A stand-in for a :class:`Piece` where only the mesh matters (bond search)."""

    mesh: trimesh.Trimesh


@dataclass
class _PartCells:
    """What every cell of one part needs: the part as a Manifold, the seeds and the box."""

    manifold: Any
    planes: np.ndarray | None  # (m, 4) outward face planes n.x <= d of a convex part, else None
    seeds: np.ndarray  # (n, 3)
    neighbours: list[np.ndarray]
    lo: np.ndarray  # (3,) enlarged bounding box
    hi: np.ndarray

    @classmethod
    def of(cls, part: Part, seeds: np.ndarray) -> _PartCells:
        lo, hi = part.mesh.bounds
        margin = 0.01 * float(np.linalg.norm(hi - lo)) + 1e-3
        nbrs = _neighbours(seeds) if len(seeds) > 1 else [np.zeros(0, np.int64)]
        man = _to_manifold(part.mesh, part.name)
        convex = _hull_of(man)[1] <= (1 + 1e-9) * man.volume()
        planes = _face_planes(part.mesh) if convex else None
        if planes is not None and len(planes) > HALFSPACE_MAX_PLANES:
            planes = None  # a finely tessellated convex part (a sphere): booleans are faster
        return cls(man, planes, seeds, nbrs, lo - margin, hi + margin)

    def bits(self, i: int) -> list[_Bit]:
        """The connected bits of the part inside seed ``i``'s Voronoi cell (thread-safe)."""
        import manifold3d as m3

        pid = self.manifold.original_id()
        if len(self.seeds) <= 1:
            return _bits_of(self.manifold, pid)
        s = self.seeds[i]
        nb = self.seeds[self.neighbours[i]]
        nrm = nb - s
        nrm /= np.linalg.norm(nrm, axis=1)[:, None]
        off = np.einsum("ij,ij->i", nrm, 0.5 * (nb + s))  # cell: nrm . x <= off
        if self.planes is not None:
            bit = _convex_cell(self.planes, nrm, off, s)
            if bit is not None:
                return [bit]
        cell = m3.Manifold.cube(self.hi - self.lo).translate(self.lo)
        for n, d in zip(-nrm, -off):
            cell = cell.trim_by_plane(n, float(d))
        return _bits_of(self.manifold ^ cell.as_original(), pid)


def _face_planes(mesh: trimesh.Trimesh) -> np.ndarray:
    """(m, 4) distinct outward planes [n, d] (n.x = d) of a closed mesh's faces."""
    n = np.asarray(mesh.face_normals, dtype=np.float64)
    d = np.einsum("ij,ij->i", n, np.asarray(mesh.triangles)[:, 0])
    planes = np.column_stack([n, d])
    _, first = np.unique(np.round(planes / 1e-9), axis=0, return_index=True)
    return planes[np.sort(first)]


def _convex_cell(planes: np.ndarray, nrm: np.ndarray, off: np.ndarray, seed: np.ndarray):
    """The Voronoi cell of ``seed`` in a convex part, straight from half-spaces (no boolean):
    the part's face planes and the cell's bisectors (``nrm . x <= off``) intersected by qhull,
    the corners hulled by manifold3d. Faces on a part plane are exterior, the others are cut
    faces. None when qhull cannot (a seed on the part's surface): the caller falls back."""
    import manifold3d as m3
    from scipy.spatial import HalfspaceIntersection, QhullError

    halfspaces = np.vstack(
        [np.column_stack([planes[:, :3], -planes[:, 3]]), np.column_stack([nrm, -off])]
    )
    try:
        corners = HalfspaceIntersection(halfspaces, seed).intersections
    except QhullError:
        return None
    hull = m3.Manifold.hull_points(corners)
    if hull.is_empty():
        return None
    mesh = hull.to_mesh64()
    verts = np.array(mesh.vert_properties[:, :3], dtype=np.float64)
    faces = np.asarray(mesh.tri_verts, dtype=np.int64)
    tri = verts[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n = cross / np.maximum(np.linalg.norm(cross, axis=1), 1e-300)[:, None]
    centre = tri.mean(axis=1)
    scale = float(np.ptp(verts, axis=0).max())
    on_part = (
        (n @ planes[:, :3].T > 1 - 1e-9)
        & (np.abs(centre @ planes[:, :3].T - planes[:, 3]) <= 1e-9 * max(scale, 1.0))
    ).any(axis=1)
    return _Bit([hull], verts, faces, ~on_part)


# ----------------------------------------------------------------------------- pieces


def convex_hulls(manifold, volume: float, depth: int = 0) -> list[np.ndarray]:
    """Convex hull points of a piece; a compound when the hull exceeds ``HULL_RATIO`` x volume.

    A non-convex piece is split by the plane that takes the most hull volume off per hull it
    adds, recursively (at most ``HULL_MAX_DEPTH`` times). The candidate planes are those at
    the piece's concave edges (:func:`_cut_planes`; cutting along one removes that concavity:
    the L of wall around a window corner splits into two exact boxes). A cut may leave more
    than two bits (the prongs of a U under its bar); counting the hulls it adds keeps a curved
    piece from crumbling into three bits a cut (a tube's arc cut along a facet's plane: its two
    horns and the rest), where a cut across the arc halves it. The union of the hulls is the
    piece, up to the hull slack ``HULL_RATIO`` allows, so hulls of neighbouring pieces barely
    overlap at rest.
    """
    hull, hull_volume = _hull_of(manifold)
    if hull_volume <= HULL_RATIO * volume or depth >= HULL_MAX_DEPTH:
        return [simplify_hull(hull)]
    best = None
    for n, d in _cut_planes(manifold):
        # each side may fall apart (the prongs of a U under its bar): one hull per bit
        halves = [
            b
            for h in manifold.split_by_plane(n, d)
            for b in h.decompose()
            if b.volume() > 1e-9 * volume
        ]
        if len(halves) < 2:
            continue
        gain = (hull_volume - sum(_hull_of(h)[1] for h in halves)) / (len(halves) - 1)
        if best is None or gain > best[0] + 1e-12 * volume:
            best = (gain, halves)
    if best is None:
        return [simplify_hull(hull)]
    return [pts for h in best[1] for pts in convex_hulls(h, h.volume(), depth + 1)]


def _hull_of(manifold) -> tuple[np.ndarray, float]:
    """(vertices, volume) of the convex hull of a closed manifold's vertices, by qhull.

    Not ``Manifold.hull()``: on clusters of coplanar points (the facets of a subdivided mesh)
    its hull can come out non-convex and too large (elalish/manifold#1785, open in 3.5): a
    convex piece of a 2.5M-face cylinder got a hull 1 % larger than itself, and so a compound
    search over 1915 planes (31 s) and needless hulls, some of them flat."""
    from scipy.spatial import ConvexHull, QhullError

    pts = np.asarray(manifold.to_mesh64().vert_properties[:, :3], dtype=np.float64)
    try:
        hull = ConvexHull(pts)
    except QhullError:  # flat or degenerate: no volume to lose
        return pts, 0.0
    return pts[hull.vertices], float(hull.volume)


def simplify_hull(points: np.ndarray, max_verts: int = MAX_HULL_VERTS) -> np.ndarray:
    """The vertices of ``points``' convex hull, at most ``max_verts`` of them: quickhull
    stopped early. From a tetrahedron of extreme points, the vertex farthest outside the hull
    so far is added until ``max_verts`` are in. The result lies inside the full hull (a piece's
    neighbours still do not overlap it at rest), off its surface by at most the last distance.
    """
    from scipy.spatial import ConvexHull

    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(pts) <= max_verts:
        return pts.copy()
    verts = pts[ConvexHull(pts).vertices]
    if len(verts) <= max_verts:
        return verts
    i = int(np.argmin(verts[:, 0]))
    j = int(np.argmax(np.linalg.norm(verts - verts[i], axis=1)))
    axis = (verts[j] - verts[i]) / np.linalg.norm(verts[j] - verts[i])
    off = verts - verts[i]
    k = int(np.argmax(np.linalg.norm(off - np.outer(off @ axis, axis), axis=1)))
    normal = np.cross(axis, verts[k] - verts[i])
    m = int(np.argmax(np.abs(off @ normal)))
    chosen = [i, j, k, m]
    while len(chosen) < max_verts:
        eq = ConvexHull(verts[chosen]).equations  # n.x + d <= 0 inside
        outside = (verts @ eq[:, :3].T + eq[:, 3]).max(axis=1)
        chosen.append(int(np.argmax(outside)))
    return verts[chosen]


def _cut_planes(manifold) -> list[tuple[np.ndarray, float]]:
    """Distinct planes (n, d) at a piece's concave edges: first the planes of the faces there,
    then the planes through each edge that bisect its two faces (along a curved concave
    surface, a cut across it: a tube's arc halves into two arcs, where a facet's own plane cuts
    off both its horns, three bits); without any, the axis planes through its centre."""
    mesh = manifold.to_mesh64()
    v = np.asarray(mesh.vert_properties[:, :3], dtype=np.float64)
    f = np.asarray(mesh.tri_verts, dtype=np.int64)
    tri = v[f]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal = cross / np.maximum(np.linalg.norm(cross, axis=1), 1e-300)[:, None]
    # each directed edge (a, b) of face i meets its twin (b, a) of face j (a closed manifold);
    # the edge is concave where j's third corner lies above i's plane
    ea = f.reshape(-1)
    eb = np.roll(f, -1, axis=1).reshape(-1)
    third = np.roll(f, -2, axis=1).reshape(-1)
    face = np.repeat(np.arange(len(f)), 3)
    key = ea * len(v) + eb
    twin = np.argsort(key)[np.searchsorted(np.sort(key), eb * len(v) + ea)]
    above = np.einsum("ij,ij->i", normal[face], v[third[twin]] - v[ea])
    scale = float(np.ptp(v, axis=0).max())
    concave = np.flatnonzero(above > 1e-9 * scale)
    faces = np.unique(face[concave])
    bisect = normal[face[concave]] - normal[face[twin[concave]]]
    length = np.linalg.norm(bisect, axis=1)
    keep = length > 1e-9
    n = np.concatenate([normal[faces], bisect[keep] / length[keep, None]])
    d = np.einsum("ij,ij->i", n, np.concatenate([tri[faces, 0], v[ea[concave[keep]]]]))
    # weights for the first pick of _spread: a face plane's area; the bisectors come after
    weight = np.concatenate([np.linalg.norm(cross[faces], axis=1), np.zeros(int(keep.sum()))])
    # a plane and its opposite cut the same way: one sign per plane
    sign = np.where(n[np.arange(len(n)), np.argmax(np.abs(n), axis=1)] < 0, -1.0, 1.0)
    planes = np.column_stack([n * sign[:, None], d * sign]).reshape(-1, 4)
    _, first, group = np.unique(
        np.round(planes / 1e-7), axis=0, return_index=True, return_inverse=True
    )
    order = np.argsort(first)  # the distinct planes in order: face planes, then bisectors
    planes = planes[first[order]]
    if len(planes) > MAX_CUT_PLANES:
        area = np.bincount(group.ravel(), weights=weight)[order]
        planes = planes[_spread(planes, area, scale, MAX_CUT_PLANES)]
    out = [(pl[:3], float(pl[3])) for pl in planes]
    if out:
        return out
    lo, hi = _bounds(manifold)
    for axis in range(3):
        e = np.zeros(3)
        e[axis] = 1.0
        out.append((e, float(0.5 * (lo[axis] + hi[axis]))))
    return out


def _spread(planes: np.ndarray, area: np.ndarray, scale: float, k: int) -> np.ndarray:
    """Indices of ``k`` of ``planes`` ((m, 4) n, d) that spread over all of them: the one of
    the largest ``area`` first, then each time the plane farthest from those chosen (normals
    apart plus offsets apart over ``scale``). A finely tessellated concave surface keeps
    candidates along its whole curve, where the largest areas alone could bunch at one end."""
    key = np.column_stack([planes[:, :3], planes[:, 3] / max(scale, 1e-12)])
    chosen = [int(np.argmax(area))]
    gap = np.linalg.norm(key - key[chosen[0]], axis=1)
    while len(chosen) < k:
        chosen.append(int(np.argmax(gap)))
        gap = np.minimum(gap, np.linalg.norm(key - key[chosen[-1]], axis=1))
    return np.sort(chosen)


def _bounds(manifold) -> tuple[np.ndarray, np.ndarray]:
    b = manifold.bounding_box()
    return np.array(b[:3], dtype=np.float64), np.array(b[3:], dtype=np.float64)


def _make_piece(bit: _Bit, part: Part, n: int, density: float) -> Piece:
    mesh = trimesh.Trimesh(bit.vertices, bit.faces, process=False)
    props = trimesh.triangles.mass_properties(mesh.triangles, density=density, skip_inertia=False)
    volume = float(props["volume"])
    return Piece(
        name=f"{part.name}.piece_{n:04d}",
        element=part.name,
        kind=part.kind,
        material=part.material,
        mesh=mesh,
        interior=bit.interior,
        volume=volume,
        mass=float(props["mass"]),
        com=np.asarray(props["center_mass"], dtype=np.float64),
        inertia=np.asarray(props["inertia"], dtype=np.float64),
        hulls=[h for m in bit.shells for h in convex_hulls(m, m.volume())],
    )


# ----------------------------------------------------------------------------- bonds


def _plane_groups(pieces: Sequence[Piece]):
    """Faces of every piece grouped by plane (vectorised over all pieces).

    Returns per group: piece (G,), unit normal (G, 3), offset (G,) with n.x = d, bounds
    lo, hi (G, 3), area (G,), area centroid (G, 3), and the triangles of each group (list of
    (k, 3, 3)).
    """
    tris = np.concatenate([np.asarray(p.mesh.triangles, dtype=np.float64) for p in pieces])
    owner = np.repeat(np.arange(len(pieces)), [len(p.mesh.faces) for p in pieces])
    cross = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    w = np.linalg.norm(cross, axis=1)
    ok = w > 1e-18
    tris, owner, cross, w = tris[ok], owner[ok], cross[ok], w[ok]
    n = cross / w[:, None]
    d = np.einsum("ij,ij->i", n, tris[:, 0])
    # coarse keys: one plane of one piece per group (distinct planes of a piece are far apart)
    key = np.column_stack(
        [owner, np.round(n / (100 * NORMAL_TOL)), np.round(d / (100 * PLANE_TOL))]
    ).astype(np.int64)
    _, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.ravel()
    G = int(inv.max()) + 1
    normal = np.stack([np.bincount(inv, cross[:, k], G) for k in range(3)], axis=1)
    normal /= np.linalg.norm(normal, axis=1)[:, None]
    offset = np.bincount(inv, w * d, G) / np.bincount(inv, w, G)
    lo = np.full((G, 3), np.inf)
    hi = np.full((G, 3), -np.inf)
    np.minimum.at(lo, inv, tris.min(axis=1))
    np.maximum.at(hi, inv, tris.max(axis=1))
    piece = np.zeros(G, dtype=np.int64)
    piece[inv] = owner
    area = 0.5 * np.bincount(inv, w, G)
    centre = tris.mean(axis=1)
    centroid = np.stack([np.bincount(inv, 0.5 * w * centre[:, k], G) for k in range(3)], axis=1)
    centroid /= area[:, None]
    order = np.argsort(inv, kind="stable")
    groups = np.split(tris[order], np.cumsum(np.bincount(inv, minlength=G))[:-1])
    return piece, normal, offset, lo, hi, area, centroid, groups


def _plane_basis(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit u, v with u x v = n (plain float maths: this runs once per face pair)."""
    nx, ny, nz = (float(c) for c in n)
    if abs(nx) <= abs(ny) and abs(nx) <= abs(nz):  # u = n x e_x
        u = (0.0, nz, -ny)
    elif abs(ny) <= abs(nz):  # u = n x e_y
        u = (-nz, 0.0, nx)
    else:  # u = n x e_z
        u = (ny, -nx, 0.0)
    s = math.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)
    ux, uy, uz = u[0] / s, u[1] / s, u[2] / s
    v = (ny * uz - nz * uy, nz * ux - nx * uz, nx * uy - ny * ux)
    return np.array((ux, uy, uz)), np.array(v)


def _same_polygon(tris_a: np.ndarray, tris_b: np.ndarray) -> bool:
    """Whether two face groups of equal area have the same corners: then they cover the same
    polygon (the usual shared face of two Voronoi cells)."""
    va = np.unique(np.round(tris_a.reshape(-1, 3) / (10 * PLANE_TOL)), axis=0)
    vb = np.unique(np.round(tris_b.reshape(-1, 3) / (10 * PLANE_TOL)), axis=0)
    return va.shape == vb.shape and np.array_equal(va, vb)


def _overlap(tris_a: np.ndarray, tris_b: np.ndarray, n: np.ndarray, d: float):
    """Area [m^2] and centroid (3,) of the overlap of two coplanar face groups.

    ``tris_a`` faces along ``n``, ``tris_b`` faces against it (so its triangles are reversed).
    Clipper2 (inside manifold3d's CrossSection) rounds coordinates to 1e-8, so the polygons
    are moved to their own corner and scaled by a power of two to about 1e6 units first:
    the overlap is then exact to about 1e-14 relative. Area and centroid are the float64
    shoelace sums of the resulting polygons.
    """
    import manifold3d as m3

    u, v = _plane_basis(n)
    a2 = np.stack([tris_a @ u, tris_a @ v], axis=-1)
    b2 = np.stack([tris_b @ u, tris_b @ v], axis=-1)[:, ::-1]
    corner = np.minimum(a2.reshape(-1, 2).min(0), b2.reshape(-1, 2).min(0))
    extent = max(float(np.ptp(a2.reshape(-1, 2), axis=0).max()), 1e-12)
    scale = 2.0 ** round(math.log2(1e6 / extent))
    inter = m3.CrossSection(list((a2 - corner) * scale)) ^ m3.CrossSection(
        list((b2 - corner) * scale)
    )
    area = cx = cy = 0.0
    for poly in inter.to_polygons():
        x, y = poly[:, 0], poly[:, 1]
        x1, y1 = np.append(x[1:], x[0]), np.append(y[1:], y[0])
        c = x * y1 - x1 * y
        area += c.sum() / 2
        cx += ((x + x1) * c).sum() / 6
        cy += ((y + y1) * c).sum() / 6
    if area <= MIN_BOND_AREA * scale**2:
        return 0.0, None
    cx, cy = cx / area / scale + corner[0], cy / area / scale + corner[1]
    return area / scale**2, n * d + cx * u + cy * v


def find_bonds(
    pieces: Sequence[Piece | _MeshOnly],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pieces that share a face: (pairs (B, 2), points (B, 3), normals (B, 3), areas (B,)).

    One bond per pair of pieces and contact plane: Voronoi neighbours share one face; two
    pieces of non-convex parts may touch in several planes (a wall bit wrapping a window
    pane), each gets its own bond with its own normal. Pairs are sorted (i < j).
    """
    from scipy.spatial import cKDTree

    piece, normal, offset, lo, hi, area, centroid, tris = _plane_groups(pieces)
    # groups in one plane facing each other: (n, d) of one is close to (-n, -d) of the other
    plane = np.column_stack([normal, offset])
    near = cKDTree(plane).sparse_distance_matrix(cKDTree(-plane), 5e-3, output_type="ndarray")
    cand = np.column_stack([near["i"], near["j"]]).astype(np.int64)
    cand = cand[cand[:, 0] < cand[:, 1]]
    cand = cand[np.lexsort((cand[:, 1], cand[:, 0]))]  # a fixed order, whatever the tree's
    if len(cand):
        a, b = cand[:, 0], cand[:, 1]
        same_plane = (
            (piece[a] != piece[b])
            & (np.einsum("ij,ij->i", normal[a], normal[b]) < -1 + 10 * NORMAL_TOL)
            & (np.abs(offset[a] + offset[b]) < 10 * PLANE_TOL)
        )
        # and overlapping with positive area in the plane, not only along an edge
        overlap = np.minimum(hi[a], hi[b]) - np.maximum(lo[a], lo[b])
        in_plane = (np.sum(overlap > 1e3 * PLANE_TOL, axis=1) >= 2) & np.all(
            overlap > -10 * PLANE_TOL, axis=1
        )
        cand = cand[same_plane & in_plane]
    acc: dict[tuple[int, int, int], list] = {}
    for ga, gb in cand:
        if piece[ga] > piece[gb]:
            ga, gb = gb, ga
        if abs(area[ga] - area[gb]) <= 1e-12 * area[ga] and _same_polygon(tris[ga], tris[gb]):
            common, point = float(area[ga]), centroid[ga]
        else:
            common, point = _overlap(tris[ga], tris[gb], normal[ga], offset[ga])
        if common <= 0:
            continue
        e = acc.setdefault((int(piece[ga]), int(piece[gb]), int(ga)), [0.0, np.zeros(3)])
        e[0] += common
        e[1] += common * point
    keys = sorted(acc)
    pairs = np.array([k[:2] for k in keys], dtype=np.int32).reshape(-1, 2)
    areas = np.array([acc[k][0] for k in keys], dtype=np.float64)
    points = np.array([acc[k][1] / acc[k][0] for k in keys]).reshape(-1, 3)
    normals = normal[[k[2] for k in keys]].reshape(-1, 3)
    return pairs, points, normals, areas


def ground_contacts(pieces: Sequence[Piece]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pieces resting on y = 0: (index (G,), point (G, 3), area (G,)) of their faces on it."""
    idx, points, areas = [], [], []
    for i, p in enumerate(pieces):
        v = p.mesh.vertices
        if v[:, 1].min() > GROUND_TOL:
            continue
        tris = np.asarray(p.mesh.triangles)
        on = np.all(np.abs(tris[:, :, 1]) <= GROUND_TOL, axis=1)
        if not on.any():
            continue
        cross = np.cross(tris[on, 1] - tris[on, 0], tris[on, 2] - tris[on, 0])
        down = cross[:, 1] < 0
        a = 0.5 * np.linalg.norm(cross[down], axis=1)
        if a.sum() <= MIN_BOND_AREA:
            continue
        c = tris[on][down].mean(axis=1)
        pt = (a[:, None] * c).sum(0) / a.sum()
        pt[1] = 0.0
        idx.append(i)
        points.append(pt)
        areas.append(float(a.sum()))
    return np.array(idx, dtype=np.int64), np.array(points).reshape(-1, 3), np.array(areas)


def make_bonds(
    pieces: Sequence[Piece], overrides: dict | None = None, anchor_to_ground: bool = True
) -> Bonds:
    """The bond graph with strengths: the weaker material of the two pieces governs."""
    pairs, points, normals, areas = find_bonds(pieces)
    if anchor_to_ground:
        gi, gp, ga = ground_contacts(pieces)
        pairs = np.concatenate([pairs, np.column_stack([gi, -np.ones_like(gi)]).astype(np.int32)])
        points = np.concatenate([points, gp])
        normals = np.concatenate([normals, np.tile([0.0, -1.0, 0.0], (len(gi), 1))])
        areas = np.concatenate([areas, ga])
    mats = {name: resolve(name, overrides) for name in {p.material for p in pieces}}
    strength = {
        key: np.array([getattr(mats[p.material], key) for p in pieces], dtype=np.float64)
        for key in ("tensile", "shear", "compressive")
    }
    a, b = pairs[:, 0], pairs[:, 1]

    def weaker(s: np.ndarray) -> np.ndarray:
        return np.where(b >= 0, np.minimum(s[a], s[np.maximum(b, 0)]), s[a]) if len(a) else s[:0]

    return Bonds(
        pairs=pairs.astype(np.int32),
        points=points.astype(np.float64),
        normals=normals.astype(np.float64),
        areas=areas.astype(np.float64),
        **{k: weaker(s) for k, s in strength.items()},
    )


# ----------------------------------------------------------------------------- fracture


def _check_count(n_pieces: int) -> None:
    if int(n_pieces) != n_pieces or not 1 <= n_pieces <= MAX_PIECES:
        raise UserError(f"fracture.pieces must be an integer 1..{MAX_PIECES}, got {n_pieces!r}")


def fracture_parts(
    parts: Sequence[Part],
    n_pieces: int,
    seed: int = 0,
    detail: Sequence[tuple] = (),
    *,
    overrides: dict | None = None,
    anchor_to_ground: bool = True,
    progress: Callable[[int, str], Any] | None = None,
    threads: int = 0,
) -> Scene:
    """Fracture ``parts`` into about ``n_pieces`` pieces (at least one per part) and bond them.

    ``detail`` is a list of ``(position (3,), radius [m], factor)``: within ``radius`` of
    ``position`` pieces are about ``factor`` times smaller in volume. ``overrides`` are the
    shot's ``[materials.<name>]`` tables. ``progress(total, description)`` is a context manager
    factory whose bar has ``.advance(n)`` (``StageContext.progress``); ``threads`` as in
    :func:`fracture_with_seeds`. The seeds come from ``seed`` alone (same seed, same pieces).
    """
    _check_count(n_pieces)
    if not parts:
        raise UserError("the building has no parts: nothing to fracture")
    for d in detail:
        if not float(d[1]) > 0 or not float(d[2]) > 0:
            raise UserError(
                f"detail radius and factor must be > 0, got radius {d[1]}, factor {d[2]}"
            )
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    counts = allocate_seeds(weighted_volumes(parts, detail, rng), int(n_pieces))
    seeds = [_scatter_seeds(p, int(c), rng, detail) for p, c in zip(parts, counts)]
    seconds_seeds = time.perf_counter() - t0
    scene = fracture_with_seeds(
        parts,
        seeds,
        overrides=overrides,
        anchor_to_ground=anchor_to_ground,
        progress=progress,
        threads=threads,
    )
    scene.timings = {"seconds_seeds": seconds_seeds, **scene.timings}
    return scene


def fracture_with_seeds(
    parts: Sequence[Part],
    seeds: Sequence[np.ndarray],
    *,
    overrides: dict | None = None,
    anchor_to_ground: bool = True,
    progress: Callable[[int, str], Any] | None = None,
    threads: int = 0,
) -> Scene:
    """The scene from given Voronoi seeds: ``seeds[k]`` ((n_k, 3), inside ``parts[k]``).

    Cells and pieces run on ``threads`` threads (0 = one per CPU): manifold3d and qhull
    release the GIL, so their work overlaps; benchmarks/bench_fracture.py measures 1 thread
    against all. Results are gathered in cell order, so the scene does not depend on the
    thread count (a test checks it).
    """
    t0 = time.perf_counter()
    densities = {name: resolve(name, overrides).density for name in {p.material for p in parts}}
    cells = [_PartCells.of(p, _distinct(s)) for p, s in zip(parts, seeds)]
    tasks = [(k, i) for k, c in enumerate(cells) for i in range(len(c.neighbours))]
    workers = threads if threads > 0 else (os.cpu_count() or 1)
    per_cell: list[list[list[_Bit]]] = [[] for _ in parts]
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        progress(len(tasks), "fracture") if progress else nullcontext() as bar,
    ):
        for (k, _), got in zip(tasks, pool.map(lambda t: cells[t[0]].bits(t[1]), tasks)):
            per_cell[k].append(got)
            if bar is not None:
                bar.advance(1)
        bits = [
            _merge_slivers(groups, float(part.mesh.volume)) for part, groups in zip(parts, per_cell)
        ]
        t1 = time.perf_counter()
        jobs = [(k, n, b) for k, bs in enumerate(bits) for n, b in enumerate(bs)]
        pieces = list(
            pool.map(
                lambda j: _make_piece(j[2], parts[j[0]], j[1], densities[parts[j[0]].material]),
                jobs,
            )
        )
    t2 = time.perf_counter()
    elements = [
        {
            "name": part.name,
            "kind": part.kind,
            "material": part.material,
            "volume": float(part.mesh.volume),
            "pieces": len(bs),
        }
        for part, bs in zip(parts, bits)
    ]
    input_volume = float(math.fsum(e["volume"] for e in elements))
    bonds = make_bonds(pieces, overrides, anchor_to_ground)
    # presets in their fixed order, then the shot's own materials by name
    used = sorted({p.material for p in pieces}, key=lambda m: (m not in MATERIAL_NAMES, _rank(m)))
    timings = {
        "seconds_cells": t1 - t0,
        "seconds_pieces": t2 - t1,
        "seconds_bonds": time.perf_counter() - t2,
    }
    return Scene(
        pieces,
        bonds,
        input_volume,
        material_names=tuple(used),
        elements=elements,
        timings=timings,
    )


def _distinct(seeds) -> np.ndarray:
    """(n, 3) seeds without repeats (two equal seeds would give two equal cells), in order."""
    seeds = np.asarray(seeds, dtype=np.float64).reshape(-1, 3)
    _, first = np.unique(seeds, axis=0, return_index=True)
    return seeds[np.sort(first)]


def _rank(material: str) -> int | str:
    return MATERIAL_NAMES.index(material) if material in MATERIAL_NAMES else material


def _detail_of(shot: Shot) -> list[tuple]:
    detail = [(tuple(d.position), float(d.radius), float(d.factor)) for d in shot.fracture.detail]
    detail += [(tuple(c.position), float(c.radius), CHARGE_DETAIL_FACTOR) for c in shot.charges]
    return detail


def prepare(shot: Shot, *, progress: Callable[[int, str], Any] | None = None) -> Scene:
    """The shot's building, fractured and bonded (DESIGN.md section 5)."""
    from destruct.building import building_from_shot

    method = getattr(shot.fracture, "method", "voronoi")
    if method != "voronoi":
        raise UserError(f"fracture.method {method!r} is not supported; allowed: 'voronoi'")
    b = shot.building
    origin = np.zeros(3)
    repair: dict[str, Any] = {}
    if getattr(b, "mesh", None) is not None:
        from destruct.meshio import load_parts

        parts, origin, repair = load_parts(
            b.mesh,
            scale=b.scale,
            up=b.up,
            material=b.material,
            materials=b.materials,
            max_parts=MAX_PIECES,
        )
    else:
        parts = building_from_shot(b)
    seed = shot.fracture.seed if shot.fracture.seed is not None else shot.shot.seed
    scene = fracture_parts(
        parts,
        shot.fracture.pieces,
        seed,
        _detail_of(shot),
        overrides=material_overrides(shot),
        anchor_to_ground=bool(shot.sim.anchor_to_ground),
        progress=progress,
        threads=int(getattr(shot.sim, "threads", 0) or 0),
    )
    scene.origin = np.asarray(origin, dtype=np.float64)
    scene.repair = repair
    return scene


def material_overrides(shot: Shot) -> dict[str, Any]:
    """``shot.materials`` as {name: {key: value}} (it may be a dict or a pydantic model)."""
    m = getattr(shot, "materials", None) or {}
    if hasattr(m, "model_dump"):
        m = m.model_dump()
    return {k: (v.model_dump() if hasattr(v, "model_dump") else v) for k, v in dict(m).items()}


# ----------------------------------------------------------------------------- artifact


def scene_arrays(scene: Scene) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The arrays of pieces.npz and bonds.npz (docs/FORMATS.md), without the format label."""
    P = len(scene.pieces)
    names = list(scene.material_names)
    com = np.array([p.com for p in scene.pieces], dtype=np.float64).reshape(P, 3)
    verts = [np.asarray(p.mesh.vertices, np.float64) - p.com for p in scene.pieces]
    faces = [np.asarray(p.mesh.faces) for p in scene.pieces]
    hulls = [(i, h - p.com) for i, p in enumerate(scene.pieces) for h in p.hulls]

    def offsets(sizes):
        return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)

    def stack(arrays, width, dtype):
        return np.concatenate(arrays).astype(dtype) if arrays else np.zeros((0, width), dtype)

    pieces = {
        "names": np.array([p.name for p in scene.pieces], dtype=str),
        "element": np.array([p.element for p in scene.pieces], dtype=str),
        "kind": np.array([p.kind for p in scene.pieces], dtype=str),
        "material": np.array([names.index(p.material) for p in scene.pieces], dtype=np.int32),
        "material_names": np.array(names, dtype=str),
        "volume": np.array([p.volume for p in scene.pieces], dtype=np.float64),
        "mass": np.array([p.mass for p in scene.pieces], dtype=np.float64),
        "com": com,
        "inertia": np.array([p.inertia for p in scene.pieces], dtype=np.float64).reshape(P, 3, 3),
        "vert_offset": offsets([len(v) for v in verts]),
        "vertices": stack(verts, 3, np.float32),
        "face_offset": offsets([len(f) for f in faces]),
        "faces": stack(faces, 3, np.int32),
        "face_interior": np.concatenate([p.interior for p in scene.pieces]).astype(bool)
        if P
        else np.zeros(0, bool),
        "hull_piece": np.array([i for i, _ in hulls], dtype=np.int32),
        "hull_offset": offsets([len(h) for _, h in hulls]),
        "hull_vertices": stack([h for _, h in hulls], 3, np.float32),
        "origin": np.asarray(scene.origin, dtype=np.float64).reshape(3),
    }
    b = scene.bonds
    bonds = {
        "pairs": np.asarray(b.pairs, dtype=np.int32).reshape(-1, 2),
        "points": np.asarray(b.points, dtype=np.float64).reshape(-1, 3),
        "normals": np.asarray(b.normals, dtype=np.float64).reshape(-1, 3),
        "areas": np.asarray(b.areas, dtype=np.float64),
        "tensile": np.asarray(b.tensile, dtype=np.float64),
        "shear": np.asarray(b.shear, dtype=np.float64),
        "compressive": np.asarray(b.compressive, dtype=np.float64),
    }
    return pieces, bonds


def fracture_summary(scene: Scene) -> dict[str, Any]:
    """The content of fracture.json."""
    return {
        "format": FRACTURE_FORMAT,
        "pieces": len(scene.pieces),
        "bonds": len(scene.bonds),
        "ground_bonds": scene.ground_bonds,
        "input_volume": scene.input_volume,
        "pieces_volume": scene.pieces_volume,
        "volume_error": scene.volume_error,
        "repair": scene.repair,
        "elements": scene.elements,
    }


def write_fracture(scene: Scene, folder: str | Path) -> Path:
    """Write pieces.npz, bonds.npz and fracture.json into ``folder`` (atomically each)."""
    folder = Path(folder)
    pieces, bonds = scene_arrays(scene)
    save_npz(folder / "pieces.npz", PIECES_FORMAT, **pieces)
    save_npz(folder / "bonds.npz", BONDS_FORMAT, **bonds)
    save_json(folder / "fracture.json", fracture_summary(scene))
    return folder


def read_fracture(folder: str | Path) -> Scene:
    """The :class:`Scene` stored in ``folder`` (meshes and hulls back in world space)."""
    folder = Path(folder)
    a = load_npz(folder / "pieces.npz", PIECES_FORMAT)
    b = load_npz(folder / "bonds.npz", BONDS_FORMAT)
    info = load_json(folder / "fracture.json", FRACTURE_FORMAT)
    names = tuple(str(s) for s in a["material_names"])
    hulls: list[list[np.ndarray]] = [[] for _ in range(len(a["names"]))]
    for h, i in enumerate(a["hull_piece"]):
        hulls[i].append(a["hull_vertices"][a["hull_offset"][h] : a["hull_offset"][h + 1]])
    pieces = []
    for i, name in enumerate(a["names"]):
        com = a["com"][i]
        v = a["vertices"][a["vert_offset"][i] : a["vert_offset"][i + 1]].astype(np.float64) + com
        fs = slice(a["face_offset"][i], a["face_offset"][i + 1])
        pieces.append(
            Piece(
                name=str(name),
                element=str(a["element"][i]),
                kind=str(a["kind"][i]),
                material=names[a["material"][i]],
                mesh=trimesh.Trimesh(v, a["faces"][fs].astype(np.int64), process=False),
                interior=a["face_interior"][fs].copy(),
                volume=float(a["volume"][i]),
                mass=float(a["mass"][i]),
                com=com.copy(),
                inertia=a["inertia"][i].copy(),
                hulls=[h.astype(np.float64) + com for h in hulls[i]],
            )
        )
    bonds = Bonds(
        **{
            k: b[k]
            for k in ("pairs", "points", "normals", "areas", "tensile", "shear", "compressive")
        }
    )
    return Scene(
        pieces,
        bonds,
        float(info["input_volume"]),
        origin=a["origin"].copy(),
        material_names=names,
        elements=list(info.get("elements", [])),
        repair=dict(info.get("repair", {})),
    )


# ----------------------------------------------------------------------------- stage


#: What each list of the mesh import report means, for the stage's warnings.
REPAIR_NOTES = {
    "repaired": "open or broken components repaired by pymeshfix",
    "flipped": "inside-out components turned outward",
    "overlaps": "overlaps between parts removed from the later part",
    "degenerate": "zero-volume components left out",
    "ignored": "nodes that are not triangle meshes left out",
}


#: A volume mismatch above this is not round-off: the input's signed volume is meaningless
#: (a self-intersecting surface), so the pieces cannot be trusted.
VOLUME_REFUSE = 1e-3


def run_prepare(ctx: StageContext) -> dict[str, Any]:
    """The ``prepare`` stage: shot -> ``fracture/`` (pieces.npz, bonds.npz, fracture.json)."""
    t0 = time.perf_counter()
    scene = prepare(ctx.shot, progress=ctx.progress)
    seconds = time.perf_counter() - t0
    for key, what in REPAIR_NOTES.items():
        if scene.repair.get(key):
            ctx.warn(f"mesh import: {len(scene.repair[key])} {what} (see fracture/fracture.json)")
    if scene.volume_error > VOLUME_REFUSE:
        raise UserError(
            f"the fractured pieces hold {scene.pieces_volume:.6g} m^3 but the building encloses "
            f"{scene.input_volume:.6g} m^3 (relative error {scene.volume_error:.2g}): the mesh probably "
            "intersects itself; remove the self-intersections in your modelling tool"
        )
    if scene.volume_error > 1e-6:
        ctx.warn(f"fracture lost volume: relative error {scene.volume_error:.2e} (expected < 1e-6)")
    write_fracture(scene, ctx.path("fracture", "pieces.npz").parent)
    hulls = sum(len(p.hulls) for p in scene.pieces)
    volumes = [p.volume for p in scene.pieces]
    return {
        "pieces": len(scene.pieces),
        "bonds": len(scene.bonds),
        "ground_bonds": scene.ground_bonds,
        "parts": len(scene.elements),
        "hulls": hulls,
        "input_volume": scene.input_volume,
        "pieces_volume": scene.pieces_volume,
        "volume_error": scene.volume_error,
        "min_piece_volume": min(volumes),
        "max_piece_volume": max(volumes),
        "seconds_fracture": seconds,
        **{k: round(v, 3) for k, v in scene.timings.items()},
    }

"""World: the host side of the rigid-body simulator (DESIGN.md sections 5 and 6).

The World keeps the body, shape and bond tables as numpy arrays on the host and as Taichi
ndarrays on the device, and calls the kernel phases of ``sim_kernels`` in order each step::

    broadphase (hashed grid, pairs grown by the step's motion)
    -> substeps x [narrowphase (manifolds), constraint list, predict,
                   solve positions (Gauss-Seidel sweeps), update velocities, solve velocities]
    -> bond stresses and breaks -> wake / sleep

Host edits (new bodies and bonds, impulses, charges, kinematic targets, weakening) go to the
host tables and are uploaded before the next step; reads download after a step. No Python
loop over bodies runs inside a step.

Example::

    w = World(gravity=(0, -9.81, 0), ground=True, backend="cpu")
    a = w.add_body(box_vertices, density=2400.0, position=(0, 1, 0))
    w.step(1 / 24, substeps=8)
    w.positions()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from destruct.errors import UserError

STATE_FORMAT = "destruct.simstate/1"
SLEEP_SPEED = 0.02  # m/s: a body slower than this (at its rim) for SLEEP_TIME falls asleep
WAKE_SPEED = 0.05  # m/s: a body faster than this wakes the sleeping bodies it touches
SLEEP_TIME = 0.5  # s
CONTACT_MARGIN = 0.005  # m: speculative contact distance added to one step of motion


def _k():
    """The kernel modules, imported on first use (they import Taichi)."""
    from sim_kernels import backend, bodies, bonds, broadphase, contacts, solve

    return backend, bodies, broadphase, contacts, bonds, solve


def hull_data(points: np.ndarray) -> dict[str, np.ndarray | float]:
    """Convex hull of points: vertices, merged face planes, volume, centroid, second moment.

    Returns ``vertices (k, 3)``, ``planes (f, 4)`` (outward unit normal, offset: inside is
    n.p <= d), ``edges (e, 2)`` (vertex rows of each edge between two merged faces),
    ``edge_faces (e, 2)`` (plane rows of the two faces that meet there), ``volume`` [m^3], ``centroid (3,)`` and ``second_moment (3, 3)`` = integral of
    p p^T dV about the origin [m^5].
    """
    from scipy.spatial import ConvexHull, QhullError

    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(pts) < 4 or not np.all(np.isfinite(pts)):
        raise UserError(f"a body hull needs at least 4 finite points, got {len(pts)} points")
    try:
        hull = ConvexHull(pts)
    except QhullError:
        raise UserError(
            "a body hull is flat or degenerate (zero volume); give a solid shape"
        ) from None
    tri = hull.points[hull.simplices]  # (f, 3, 3)
    nrm = hull.equations[:, :3]
    cr = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = np.einsum("ij,ij->i", cr, nrm) < 0
    tri[flip] = tri[flip][:, [0, 2, 1]]
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    vol6 = np.einsum("ij,ij->i", a, np.cross(b, c))
    volume = vol6.sum() / 6.0
    if volume <= 1e-15:
        raise UserError("a body hull has zero volume; give a solid shape")
    centroid = (vol6[:, None] * (a + b + c)).sum(0) / 24.0 / volume
    s = a + b + c
    outer = (
        np.einsum("ij,ik->ijk", a, a)
        + np.einsum("ij,ik->ijk", b, b)
        + np.einsum("ij,ik->ijk", c, c)
        + np.einsum("ij,ik->ijk", s, s)
    )
    second = (vol6[:, None, None] / 6.0 / 20.0 * outer).sum(0)
    planes = np.concatenate([nrm, -hull.equations[:, 3:]], axis=1)
    _, keep, tri_plane = np.unique(
        np.round(planes, 9), axis=0, return_index=True, return_inverse=True
    )
    row = np.empty(len(keep), dtype=np.int64)  # unique plane -> its row in the kept planes
    row[np.argsort(keep)] = np.arange(len(keep))
    face = row[tri_plane.reshape(-1)]  # (t,) merged face of each triangle
    verts = np.sort(hull.vertices)
    vrow = np.full(len(pts), -1, dtype=np.int64)
    vrow[verts] = np.arange(len(verts))
    # every triangle side is shared by two triangles; it is a hull edge where their faces differ
    s = hull.simplices
    sides = np.sort(np.concatenate([s[:, [0, 1]], s[:, [1, 2]], s[:, [2, 0]]]), axis=1)
    owner = np.tile(np.arange(len(s)), 3)
    order = np.lexsort((sides[:, 1], sides[:, 0]))
    sides, owner = sides[order][0::2], owner[order]
    f0, f1 = face[owner[0::2]], face[owner[1::2]]
    real = f0 != f1
    return {
        "vertices": hull.points[verts],
        "planes": planes[np.sort(keep)],
        "edges": vrow[sides[real]],
        "edge_faces": np.stack([f0[real], f1[real]], axis=1),
        "volume": float(volume),
        "centroid": centroid,
        "second_moment": second,
    }


class World:
    """Rigid convex bodies, a ground plane and breakable glue bonds (DESIGN.md section 5).

    ``gravity``: (3,) m/s^2. ``ground``: an infinite plane at y = 0 with ``ground_friction``.
    ``backend``: "cpu", "cuda" or "auto"; ``threads``: CPU threads (0 = all). ``iterations``:
    Gauss-Seidel sweeps of the position pass per substep (stiffer stacks). ``seed`` is kept
    in the state for the debris emitters; the rigid solver itself draws no random numbers.
    """

    def __init__(
        self,
        gravity: Sequence[float] = (0.0, -9.81, 0.0),
        ground: bool = True,
        ground_friction: float = 1.0,
        backend: str = "cpu",
        seed: int = 0,
        *,
        threads: int = 0,
        iterations: int = 8,
    ):
        backend_mod = _k()[0]
        try:
            self.arch = backend_mod.init(backend, threads)
        except ValueError as e:
            raise UserError(str(e)) from None
        self.gravity = np.asarray(gravity, dtype=np.float64).reshape(3)
        self.ground = bool(ground)
        self.ground_friction = float(ground_friction)
        self.seed = int(seed)
        if not 1 <= int(iterations) <= 64:
            raise UserError(f"solver iterations must be 1..64, got {iterations}")
        self.iterations = int(iterations)
        self.time = 0.0
        self.steps = 0
        self.injected_energy = 0.0  # [J] kinetic energy added by charges (for blow-up guards)
        self.breakable = True  # False: bonds hold whatever the load (stresses still measured)
        _, bodies, _, contacts, bonds, _ = _k()
        self._bf = np.zeros((0, bodies.NBF))
        self._bi = np.zeros((0, bodies.NBI), dtype=np.int32)
        self._sf = np.zeros((0, 4))
        self._si = np.zeros((0, 5), dtype=np.int32)
        self._hv = np.zeros((0, 3))
        self._hp = np.zeros((0, 4))
        self._he = np.zeros((0, contacts.NHE))
        self._se = np.zeros((0, 2), dtype=np.int32)
        self._bdf = np.zeros((0, bonds.NBD))
        self._bdi = np.zeros((0, bonds.NBDI), dtype=np.int32)
        self._broken_seen = np.zeros(0, dtype=bool)
        self._mass = np.zeros(0)
        self._excluded = np.zeros((0, 2), dtype=np.int32)  # body pairs that never collide
        # rows added since the last flush (bulk adds stay O(n)): name -> list of arrays
        self._pending: dict[str, list[np.ndarray]] = {
            k: [] for k in ("bf", "bi", "sf", "si", "se", "hv", "hp", "he", "mass", "bdf", "bdi")
        }
        self._nbody = self._nbond = self._nhv = self._nhp = self._nhe = 0
        self._dev: dict[str, Any] = {}
        self._host_fresh = True  # host tables hold the latest state
        self._upload = True  # host tables changed since the last upload
        self._geometry_changed = True
        self._pair_cap = 0
        self._unit_cap = 0
        self.last_pairs = 0
        self.last_units = 0

    # ---- building the scene -------------------------------------------------------------------

    @property
    def num_bodies(self) -> int:
        return self._nbody

    @property
    def num_bonds(self) -> int:
        return self._nbond

    def add_body(
        self,
        vertices: np.ndarray | Sequence[np.ndarray],
        density: float = 1000.0,
        position: Sequence[float] = (0.0, 0.0, 0.0),
        rotation: Sequence[float] = (1.0, 0.0, 0.0, 0.0),
        velocity: Sequence[float] = (0.0, 0.0, 0.0),
        angular_velocity: Sequence[float] = (0.0, 0.0, 0.0),
        friction: float = 0.6,
        restitution: float = 0.1,
        fixed: bool = False,
        *,
        kinematic: bool = False,
        mass: float | None = None,
        inertia: np.ndarray | None = None,
    ) -> int:
        """Add a rigid body; return its index.

        ``vertices``: (n, 3) points, or a list of them for a compound of convex hulls, in the
        body's own frame [m]; the body is the convex hull of each. The body is recentred on
        its centre of mass (from the hulls' volume and ``density`` [kg/m^3]) and ``position``
        places that centre. With ``mass`` [kg] and ``inertia`` ((3, 3) about the centre of
        mass, body frame [kg m^2]) given, those are used as they are and the vertices' origin
        is taken to be the centre of mass (pieces from fracture/, whose hulls approximate the
        render mesh). ``fixed``: never moves. ``kinematic``: moves with the velocity set by
        :meth:`set_kinematic`, pushes others and is not pushed.
        """
        _, B, _, C, *_ = _k()
        hulls = (
            [vertices]
            if isinstance(vertices, np.ndarray) and vertices.ndim == 2
            else list(vertices)
        )
        if not hulls:
            raise UserError("add_body needs at least one hull of vertices")
        data = [hull_data(h) for h in hulls]
        vol = sum(d["volume"] for d in data)
        if mass is None or inertia is None:
            if not density > 0 or not np.isfinite(density):
                raise UserError(f"body density must be a positive number [kg/m^3], got {density}")
            com = sum(d["volume"] * d["centroid"] for d in data) / vol
            second = sum(d["second_moment"] for d in data) * density
            m = density * vol
            second = second - m * np.outer(com, com)
            iner = np.trace(second) * np.eye(3) - second
        else:
            m = float(mass)
            com = np.zeros(3)
            iner = np.asarray(inertia, dtype=np.float64).reshape(3, 3)
            if not (m > 0 and np.all(np.isfinite(iner))):
                raise UserError(f"body mass must be positive and inertia finite, got mass={mass}")
        pos = np.asarray(position, dtype=np.float64).reshape(3)
        q = np.asarray(rotation, dtype=np.float64).reshape(4)
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(q)) and np.linalg.norm(q) > 0):
            raise UserError(
                f"body position {tuple(pos)} / rotation {tuple(q)} must be finite, rotation non-zero"
            )
        q = q / np.linalg.norm(q)
        idx = self._nbody
        row = np.zeros(B.NBF)
        row[B.X : B.X + 3] = pos
        row[B.Q : B.Q + 4] = q
        row[B.V : B.V + 3] = velocity
        row[B.W : B.W + 3] = angular_velocity
        row[B.XP : B.XP + 13] = row[B.X : B.X + 13]
        immovable = fixed or kinematic
        row[B.INVM] = 0.0 if immovable else 1.0 / m
        row[B.INVI : B.INVI + 9] = 0.0 if immovable else np.linalg.inv(iner).ravel()
        row[B.INER : B.INER + 9] = iner.ravel()
        row[B.MU] = friction
        row[B.REST] = restitution
        radius = 0.0
        for d in data:
            v = d["vertices"] - com
            p = d["planes"].copy()
            p[:, 3] -= p[:, :3] @ com
            centre = 0.5 * (v.min(0) + v.max(0))
            r = float(np.linalg.norm(v - centre, axis=1).max())
            radius = max(radius, float(np.linalg.norm(v, axis=1).max()))
            pend = self._pending
            pend["si"].append(
                np.array(
                    [[idx, self._nhv, self._nhv + len(v), self._nhp, self._nhp + len(p)]],
                    dtype=np.int32,
                )
            )
            pend["sf"].append(np.array([[*centre, r]]))
            pend["hv"].append(v)
            pend["hp"].append(p)
            e, ef = d["edges"], d["edge_faces"]
            he = np.zeros((len(e), C.NHE))
            he[:, C.EP0 : C.EP0 + 3] = v[e[:, 0]]
            he[:, C.EP1 : C.EP1 + 3] = v[e[:, 1]]
            he[:, C.EN0 : C.EN0 + 3] = p[ef[:, 0], :3]
            he[:, C.EN1 : C.EN1 + 3] = p[ef[:, 1], :3]
            he[:, C.EX : C.EX + 3] = np.cross(p[ef[:, 1], :3], p[ef[:, 0], :3])
            pend["he"].append(he)
            pend["se"].append(np.array([[self._nhe, self._nhe + len(e)]], dtype=np.int32))
            self._nhv += len(v)
            self._nhp += len(p)
            self._nhe += len(e)
        row[B.RAD] = radius
        flags = B.FIXED if fixed else (B.KINEMATIC if kinematic else 0)
        self._pending["bf"].append(row[None])
        self._pending["bi"].append(np.array([[flags, 0, 0, 0]], dtype=np.int32))
        self._pending["mass"].append(np.array([m]))
        self._nbody += 1
        self._geometry_changed = True
        self._upload = True
        return idx

    def add_bond(
        self,
        a: int,
        b: int,
        point: Sequence[float],
        normal: Sequence[float],
        area: float,
        tensile: float = 2e6,
        shear: float = 3e6,
        compressive: float = 3e7,
        *,
        modulus: float | None = None,
    ) -> int:
        """Glue body a to body b (b = -1: to the fixed ground) at world ``point``; return its index.

        ``normal``: unit normal of the shared face from a towards b (world, at the current
        poses). ``area`` [m^2]; ``tensile``, ``shear``, ``compressive`` strengths [Pa]: the bond
        breaks when a stress, from the load averaged over a step's substeps, exceeds one of
        them (scaled down by accumulated damage). The glue is elastic with Young's ``modulus``
        [Pa] (default from the compressive strength, ACI 318: E = 4700 sqrt(f_c / MPa) MPa) over
        the distance between the two centres of mass (twice the centre-to-point distance for
        the ground), so redundant bonds share loads by their stiffness.
        """
        _, _, _, _, BD, _ = _k()
        self._pull()  # the bodies' poses
        n = self.num_bodies
        if not (0 <= a < n) or not (-1 <= b < n) or a == b:
            raise UserError(
                f"add_bond: bodies must be two different indices in 0..{n - 1} (or b=-1 for the ground), got {a}, {b}"
            )
        if not (area > 0 and tensile > 0 and shear > 0 and compressive > 0):
            raise UserError(
                f"add_bond: area and strengths must be positive, got area={area}, "
                f"tensile={tensile}, shear={shear}, compressive={compressive}"
            )
        p = np.asarray(point, dtype=np.float64).reshape(3)
        nw = np.asarray(normal, dtype=np.float64).reshape(3)
        if not np.all(np.isfinite(p)) or not np.linalg.norm(nw) > 0:
            raise UserError(
                f"add_bond: point {tuple(p)} must be finite and normal {tuple(nw)} non-zero"
            )
        nw = nw / np.linalg.norm(nw)
        qa = self._bf[a, 3:7]
        row = np.zeros(BD.NBD)
        row[BD.RA : BD.RA + 3] = _qrot(_qconj(qa), p - self._bf[a, 0:3])
        if b >= 0:
            qb = self._bf[b, 3:7]
            row[BD.RB : BD.RB + 3] = _qrot(_qconj(qb), p - self._bf[b, 0:3])
            row[BD.QREL : BD.QREL + 4] = _qmul(_qconj(qa), qb)
        else:
            row[BD.RB : BD.RB + 3] = p
            row[BD.QREL : BD.QREL + 4] = _qconj(qa)
        row[BD.NRM : BD.NRM + 3] = _qrot(_qconj(qa), nw)
        row[BD.AREA] = area
        row[BD.TEN], row[BD.SHR], row[BD.CMP] = tensile, shear, compressive
        e = float(modulus) if modulus is not None else 4.7e9 * np.sqrt(compressive / 1e6)
        if not e > 0:
            raise UserError(f"add_bond: modulus must be positive [Pa], got {modulus}")
        xb = self._bf[b, 0:3] if b >= 0 else 2 * p - self._bf[a, 0:3]
        length = max(float(np.linalg.norm(xb - self._bf[a, 0:3])), 1e-3)
        row[BD.APOS] = length / (e * area)
        row[BD.AROT] = length / (e * area * area / 12.0)
        self._pending["bdf"].append(row[None])
        self._pending["bdi"].append(np.array([[a, b, 0]], dtype=np.int32))
        self._nbond += 1
        self._geometry_changed = True
        self._upload = True
        return self._nbond - 1

    # ---- stepping -----------------------------------------------------------------------------

    def step(self, dt: float, substeps: int = 8) -> None:
        """Advance by ``dt`` seconds in ``substeps`` XPBD substeps."""
        if not (dt > 0 and np.isfinite(dt)) or int(substeps) < 1:
            raise UserError(
                f"step needs dt > 0 and substeps >= 1, got dt={dt}, substeps={substeps}"
            )
        substeps = int(substeps)
        if self.num_bodies == 0:
            self.time += dt
            self.steps += 1
            return
        _, bodies, _, _, bonds, solve = _k()
        npairs = self._detect(dt, narrow=False)
        d = self._dev
        h = dt / substeps
        g = self.gravity
        for s in range(substeps):
            for launch in self._substep_launches(h, npairs, s).values():
                launch()
        nunits = int(d["count"][0])
        if self.num_bonds:
            bonds.bonds_end_step(
                d["bf"], d["bi"], d["bdf"], d["bdi"], substeps, int(self.breakable)
            )
        solve.wake_touched(
            d["bf"], d["bi"], d["si"], d["pairs"], d["bdi"], d["units"], nunits, WAKE_SPEED
        )
        bodies.end_step(
            d["bf"],
            d["bi"],
            SLEEP_SPEED,
            max(1, int(np.ceil(SLEEP_TIME / dt))),
            h,
            g[0],
            g[1],
            g[2],
        )
        self.last_pairs, self.last_units = npairs, nunits
        self.time += dt
        self.steps += 1
        self._host_fresh = False

    def _substep_launches(self, h: float, npairs: int, s: int) -> dict[str, Callable[[], None]]:
        """The kernel launches of substep ``s`` in order, by name (bench_floor times each).

        Contacts are found anew every substep (pairs once per step, grown by the step's motion):
        normals and points of fast-turning pieces would go stale over a whole frame."""
        _, _, _, contacts, _, solve = _k()
        d, g = self._dev, self.gravity
        launches: dict[str, Callable[[], None]] = {}
        if npairs:
            launches["narrowphase"] = lambda: contacts.narrowphase(
                d["bf"], d["si"], d["se"], d["hv"], d["hp"], d["he"], h, CONTACT_MARGIN, npairs,
                d["pairs"], d["pn"], d["cf"],
            )  # fmt: skip
        launches["build_units"] = lambda: solve.build_units(
            d["bf"], d["bi"], d["si"], npairs, d["pairs"], d["bdi"], d["bstart"], d["blist"],
            d["xstart"], d["xlist"], d["units"], d["count"], d["ustart"], d["ulist"],
        )  # fmt: skip
        tables = (
            d["bf"], d["bi"], d["si"], d["pairs"], d["pn"], d["cf"], d["bdf"], d["bdi"],
            d["units"], d["ustart"], d["ulist"], h, g[0], g[1], g[2], self.ground_friction,
        )  # fmt: skip

        def positions() -> None:
            for it in range(self.iterations):
                solve.position_sweep(*tables, int(s == 0), s % 2, it)

        launches["position_sweeps"] = positions
        launches["velocity_sweep"] = lambda: solve.velocity_sweep(*tables, s % 2)
        return launches

    def _detect(self, dt: float, narrow: bool = True) -> int:
        """Upload edits, then broadphase (+ narrowphase); returns the number of pairs."""
        _, _, bp, contacts, _, _ = _k()
        self._push()
        d = self._dev
        ground = int(self.ground)
        bp.build_grid(
            d["bf"],
            d["bi"],
            d["sf"],
            d["si"],
            dt,
            CONTACT_MARGIN,
            d["sb"],
            d["aux"],
            d["gstart"],
            d["gfill"],
            d["gitems"],
            d["shash"],
        )
        bp.count_pairs(
            d["bi"],
            d["si"],
            d["sb"],
            d["gstart"],
            d["gitems"],
            d["aux"],
            ground,
            d["pairs"],
            d["pstart"],
        )
        npairs = int(d["pstart"][self._si.shape[0]])
        self._ensure_pairs(npairs)
        if npairs:
            bp.write_pairs(
                d["bi"],
                d["si"],
                d["sb"],
                d["gstart"],
                d["gitems"],
                d["aux"],
                ground,
                d["pstart"],
                d["pairs"],
            )
        if npairs and narrow:
            contacts.narrowphase(
                d["bf"],
                d["si"],
                d["se"],
                d["hv"],
                d["hp"],
                d["he"],
                dt,
                CONTACT_MARGIN,
                npairs,
                d["pairs"],
                d["pn"],
                d["cf"],
            )
        return npairs

    def exclude_overlaps(self, tolerance: float = 1e-3) -> int:
        """Never collide pairs of bodies that overlap by more than ``tolerance`` [m] now.

        Fractured pieces whose convex hulls bulge into a neighbour's (a compound of hulls is
        only an approximation of a non-convex piece) would otherwise push apart the moment the
        simulation starts and load their glue with forces no bond survives. Glued pairs are
        left out anyway while their bond holds. Returns how many pairs were excluded.
        """
        _, _, _, C, _, _ = _k()
        self._pull()
        npairs = self._detect(1e-3)
        d = self._dev
        pairs = d["pairs"].to_numpy()[:npairs]
        if not npairs:
            return 0
        pn = d["pn"].to_numpy()[:npairs, :3]
        cf = d["cf"].to_numpy()[: npairs * C.MAXC].reshape(npairs, C.MAXC, -1)
        a = self._si[pairs[:, 0], 0]
        b = np.where(pairs[:, 1] >= 0, self._si[np.maximum(pairs[:, 1], 0), 0], -1)
        k = np.arange(C.MAXC)[None, :] < pairs[:, 2:3]  # (P, MAXC) live points
        xa, qa = self._bf[a, 0:3], self._bf[a, 3:7]
        pa = xa[:, None] + _qrot_many(
            np.repeat(qa, C.MAXC, 0), cf[:, :, C.RA : C.RA + 3].reshape(-1, 3)
        ).reshape(npairs, C.MAXC, 3)
        rb = cf[:, :, C.RB : C.RB + 3]
        xb, qb = self._bf[np.maximum(b, 0), 0:3], self._bf[np.maximum(b, 0), 3:7]
        pb_body = xb[:, None] + _qrot_many(np.repeat(qb, C.MAXC, 0), rb.reshape(-1, 3)).reshape(
            npairs, C.MAXC, 3
        )
        pb = np.where((b >= 0)[:, None, None], pb_body, rb)
        depth = np.einsum("pkc,pc->pk", pb - pa, pn)
        deep = np.where(k, depth, -np.inf).max(axis=1) > tolerance
        new = np.column_stack([a[deep], b[deep]]).astype(np.int32)
        self._excluded = np.unique(np.concatenate([self._excluded, new]), axis=0)
        self._geometry_changed = True
        self._upload = True
        return len(new)

    def _ensure_pairs(self, npairs: int) -> None:
        backend, _, _, contacts, _, _ = _k()
        d = self._dev
        if npairs > self._pair_cap:
            cap = max(64, int(npairs * 1.5))
            d["pairs"] = backend.ndarray_i(cap, 4)
            d["pn"] = backend.ndarray_f(cap, contacts.NPN)
            d["cf"] = backend.ndarray_f(cap * contacts.MAXC, contacts.NCF)
            self._pair_cap = cap
        if npairs + self.num_bonds > self._unit_cap:
            self._unit_cap = max(64, int((npairs + self.num_bonds) * 1.5))
            d["units"] = backend.ndarray_i(self._unit_cap, 3)
            d["ulist"] = backend.ndarray_i1(self._unit_cap)

    def _push(self) -> None:
        """Upload host edits (reallocating the device tables when the world grew)."""
        if not self._upload:
            return
        self._pull()
        backend, *_ = _k()
        d = self._dev
        ns = len(self._si)
        if self._geometry_changed:
            for name in ("sf", "hv", "hp", "he", "si", "se", "bf", "bi", "bdf", "bdi"):
                d[name] = None
            start, order = _bond_lists(self._bdi, self.num_bodies)
            d["bstart"] = _device(backend, start)
            d["blist"] = _device(backend, order)
            start, other = _pair_lists(self._excluded, self.num_bodies)
            d["xstart"] = _device(backend, start)
            d["xlist"] = _device(backend, other)
            tsize = 1 << int(np.ceil(np.log2(max(2 * ns, 2))))
            d["sb"] = backend.ndarray_f(ns, 4)
            d["aux"] = backend.ndarray_f(1, 1)
            d["gstart"] = backend.ndarray_i1(tsize + 1)
            d["gfill"] = backend.ndarray_i1(tsize)
            d["gitems"] = backend.ndarray_i1(ns)
            d["shash"] = backend.ndarray_i1(ns)
            d["pstart"] = backend.ndarray_i1(ns + 1)
            d["count"] = backend.ndarray_i1(1)
            d["ustart"] = backend.ndarray_i1(_k()[5].NKEYS + 1)
            self._pair_cap = self._unit_cap = -1
            self._ensure_pairs(0)
            self._geometry_changed = False
        bdi = (
            self._bdi if self.num_bonds else np.array([[0, -1, 1]], dtype=np.int32)
        )  # a broken pad
        for name, arr in (
            ("sf", self._sf),
            ("hv", self._hv),
            ("hp", self._hp),
            ("he", self._he),
            ("si", self._si),
            ("se", self._se),
            ("bf", self._bf),
            ("bi", self._bi),
            ("bdf", self._bdf),
            ("bdi", bdi),
        ):
            d[name] = _device(backend, arr, d.get(name))
        self._upload = False

    def _pull(self) -> None:
        """Make the host tables current: download after a step, append rows added since."""
        if not self._host_fresh:
            d = self._dev
            self._bf = d["bf"].to_numpy()
            self._bi = d["bi"].to_numpy()
            if len(self._bdi):
                self._bdf = d["bdf"].to_numpy()
                self._bdi = d["bdi"].to_numpy()
            self._host_fresh = True
        pend = self._pending
        if pend["bf"] or pend["bdf"]:
            for name in ("bf", "bi", "sf", "si", "se", "hv", "hp", "he", "mass", "bdf", "bdi"):
                if pend[name]:
                    attr = "_" + name
                    setattr(self, attr, np.concatenate([getattr(self, attr), *pend[name]]))
                    pend[name].clear()
            self._broken_seen = np.concatenate(
                [self._broken_seen, np.zeros(len(self._bdi) - len(self._broken_seen), dtype=bool)]
            )

    def _edit(self) -> None:
        self._pull()
        self._upload = True

    # ---- reading the state --------------------------------------------------------------------

    def positions(self) -> np.ndarray:
        """(n, 3) f64 centres of mass [m]."""
        self._pull()
        return self._bf[:, 0:3].copy()

    def rotations(self) -> np.ndarray:
        """(n, 4) f64 quaternions wxyz, body frame -> world."""
        self._pull()
        return self._bf[:, 3:7].copy()

    def velocities(self) -> np.ndarray:
        """(n, 3) f64 [m/s]."""
        self._pull()
        return self._bf[:, 7:10].copy()

    def angular_velocities(self) -> np.ndarray:
        """(n, 3) f64 world [rad/s]."""
        self._pull()
        return self._bf[:, 10:13].copy()

    def bond_broken(self) -> np.ndarray:
        """(B,) bool over bonds in the order they were added."""
        self._pull()
        return self._bdi[:, 2] != 0

    def bond_damage(self) -> np.ndarray:
        """(B,) f64, 0 intact .. 1 broken."""
        _, _, _, _, BD, _ = _k()
        self._pull()
        return self._bdf[:, BD.DMG].copy()

    def bond_stress_ratio(self) -> np.ndarray:
        """(B,) f64 the last step's largest stress over strength (a bond breaks at 1)."""
        _, _, _, _, BD, _ = _k()
        self._pull()
        return self._bdf[:, BD.RATIO].copy()

    def new_breaks(self) -> np.ndarray:
        """Indices of the bonds broken since the previous call (in bond order)."""
        broken = self.bond_broken()
        new = np.flatnonzero(broken & ~self._broken_seen).astype(np.int32)
        self._broken_seen = broken.copy()
        return new

    def sleeping(self) -> np.ndarray:
        """(n,) bool: bodies asleep (they wake when touched by a moving body)."""
        self._pull()
        return self._bi[:, 1] != 0

    def masses(self) -> np.ndarray:
        """(n,) f64 [kg]."""
        self._pull()
        return self._mass.copy()

    def kinetic_energy(self) -> float:
        """Total kinetic energy of the dynamic bodies [J] (fixed and kinematic ones excluded)."""
        _, B, *_ = _k()
        self._pull()
        dyn = self._bi[:, 0] == 0
        if not dyn.any():
            return 0.0
        bf = self._bf[dyn]
        v = bf[:, 7:10]
        w = bf[:, 10:13]
        R = _qmat(bf[:, 3:7])
        iner = bf[:, B.INER : B.INER + 9].reshape(-1, 3, 3)
        wl = np.einsum("nji,nj->ni", R, w)  # body-frame angular velocity
        rot = np.einsum("ni,nij,nj->n", wl, iner, wl)
        lin = self._mass[dyn] * np.einsum("ij,ij->i", v, v)
        return float(0.5 * (lin.sum() + rot.sum()))

    # ---- art direction --------------------------------------------------------------------------

    def apply_impulse(
        self, bodies: np.ndarray, impulses: np.ndarray, points: np.ndarray | None = None
    ) -> None:
        """Add impulses [N s] (k, 3) to bodies (k,), at world points (k, 3) (default: the centres)."""
        _, B, *_ = _k()
        self._edit()
        bodies = np.asarray(bodies, dtype=np.int64).reshape(-1)
        J = np.asarray(impulses, dtype=np.float64).reshape(-1, 3)
        dyn = self._bi[bodies, 0] == 0
        bodies, J = bodies[dyn], J[dyn]
        if points is not None:
            points = np.asarray(points, dtype=np.float64).reshape(-1, 3)[dyn]
        for k, (i, j) in enumerate(zip(bodies, J)):  # host edit between steps
            self._bf[i, 7:10] += j * self._bf[i, B.INVM]
            if points is not None:
                R = _qmat(self._bf[i, 3:7][None])[0]
                iinv = R @ self._bf[i, B.INVI : B.INVI + 9].reshape(3, 3) @ R.T
                self._bf[i, 10:13] += iinv @ np.cross(points[k] - self._bf[i, 0:3], j)
        self.wake(bodies)

    def stop(self) -> None:
        """Zero every dynamic body's velocity, keeping poses and bond loads (a quasi-static
        settle steps, then stops, so the structure sags into its loaded rest without ringing)."""
        self._edit()
        self._bf[self._bi[:, 0] == 0, 7:13] = 0.0

    def sleep_all(self) -> None:
        """Put every dynamic body to sleep at rest (and forget the bonds' last stresses).

        A settled structure then stays exactly as it is until something touches it: a charge,
        an impactor, a falling piece (DESIGN.md section 6: sleeping for bodies at rest).
        """
        _, _, _, _, BD, _ = _k()
        self._edit()
        dyn = self._bi[:, 0] == 0
        self._bi[dyn, 1] = 1
        self._bi[dyn, 2:4] = 0
        self._bf[dyn, 7:13] = 0.0
        self._bdf[:, BD.RATIO] = 0.0

    def wake(self, bodies: np.ndarray) -> None:
        """Wake the given bodies."""
        self._edit()
        bodies = np.asarray(bodies, dtype=np.int64).reshape(-1)
        self._bi[bodies, 1] = 0
        self._bi[bodies, 2] = 0

    def apply_charge(
        self, center: Sequence[float], radius: float, impulse: float
    ) -> dict[str, int]:
        """An explosive charge: radial impulses with falloff, bonds inside the radius destroyed.

        ``impulse`` [N s] is the charge's total: a body whose centre is at distance r < radius
        gets the share (1 - r/radius)^2 / sum of those shares, away from the centre; every intact bond whose point lies inside the radius breaks now
        (:meth:`new_breaks` reports them). Returns counts of bodies pushed and bonds broken.
        """
        _, _, _, _, BD, _ = _k()
        self._edit()
        c = np.asarray(center, dtype=np.float64).reshape(3)
        x = self._bf[:, 0:3]
        d = x - c
        r = np.linalg.norm(d, axis=1)
        hit = np.flatnonzero((r < radius) & (self._bi[:, 0] == 0))
        dirs = d[hit] / np.maximum(r[hit], 1e-9)[:, None]
        dirs[r[hit] < 1e-9] = (0.0, 1.0, 0.0)
        weight = (1.0 - r[hit] / radius) ** 2
        mag = impulse * weight / max(weight.sum(), 1e-300)
        ke0 = self.kinetic_energy()
        self.apply_impulse(hit, dirs * mag[:, None])
        self.injected_energy += max(self.kinetic_energy() - ke0, 0.0)
        pts = self.bond_points()
        inside = (np.linalg.norm(pts - c, axis=1) < radius) & (self._bdi[:, 2] == 0)
        self._bdf[inside, BD.DMG] = 1.0
        self._bdi[inside, 2] = 1  # at once: a glued piece would otherwise absorb its impulse
        self.wake(self._bdi[inside, 0])
        self.wake(self._bdi[inside, 1][self._bdi[inside, 1] >= 0])
        return {"bodies": len(hit), "bonds": int(inside.sum())}

    def weaken(self, lo: Sequence[float], hi: Sequence[float], amount: float) -> int:
        """Bonds whose point lies in the box [lo, hi] keep at most 1 - amount of their strength.

        Returns how many intact bonds were weakened; amount = 1 breaks them now. A weakened bond
        breaks at a step's end when its stress ratio reaches 1 - amount.
        """
        _, _, _, _, BD, _ = _k()
        self._edit()
        pts = self.bond_points()
        inside = np.all((pts >= np.asarray(lo)) & (pts <= np.asarray(hi)), axis=1)
        inside &= (self._bdi[:, 2] == 0) & (self._bdf[:, BD.DMG] < amount)
        self._bdf[inside, BD.DMG] = amount
        if amount >= 1.0:
            self._bdi[inside, 2] = 1
        self.wake(self._bdi[inside, 0])
        self.wake(self._bdi[inside, 1][self._bdi[inside, 1] >= 0])
        return int(inside.sum())

    def break_bonds(self, bonds: np.ndarray) -> None:
        """Mark bonds broken now (e.g. ground bonds of a shot without anchor_to_ground)."""
        _, _, _, _, BD, _ = _k()
        self._edit()
        bonds = np.asarray(bonds, dtype=np.int64).reshape(-1)
        self._bdi[bonds, 2] = 1
        self._bdf[bonds, BD.DMG] = 1.0
        self._broken_seen[bonds] = True

    def bond_points(self) -> np.ndarray:
        """(B, 3) world position of each bond's attachment on its first body [m]."""
        self._pull()
        a = self._bdi[:, 0]
        return self._bf[a, 0:3] + _qrot_many(self._bf[a, 3:7], self._bdf[:, 0:3])

    def set_kinematic(
        self, body: int, position: Sequence[float], velocity: Sequence[float]
    ) -> None:
        """Place a kinematic body and give it the velocity it keeps over the next step."""
        _, B, *_ = _k()
        self._edit()
        if self._bi[body, 0] != B.KINEMATIC:
            raise UserError(f"body {body} is not kinematic (add it with kinematic=True)")
        self._bf[body, 0:3] = position
        self._bf[body, 7:10] = velocity

    # ---- checkpoints ----------------------------------------------------------------------------

    def state(self) -> dict[str, np.ndarray]:
        """The full solver state as arrays (bit-exact): restore with :meth:`load_state`."""
        self._pull()
        return {
            "body_f": self._bf.copy(),
            "body_i": self._bi.copy(),
            "bond_f": self._bdf.copy(),
            "bond_i": self._bdi.copy(),
            "broken_seen": self._broken_seen.copy(),
            "time": np.float64(self.time),
            "steps": np.int64(self.steps),
            "excluded": self._excluded.copy(),
            "injected_energy": np.float64(self.injected_energy),
            "seed": np.int64(self.seed),
        }

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore a :meth:`state` taken from a World built with the same bodies and bonds."""
        self._pull()
        for key, mine in (
            ("body_f", self._bf),
            ("body_i", self._bi),
            ("bond_f", self._bdf),
            ("bond_i", self._bdi),
        ):
            if key not in state or np.shape(state[key]) != mine.shape:
                raise UserError(
                    f"checkpoint does not match this world ({key}: "
                    f"{np.shape(state.get(key))} vs {mine.shape}); re-run with --force"
                )
        self._bf = np.array(state["body_f"], dtype=np.float64)
        self._bi = np.array(state["body_i"], dtype=np.int32)
        self._bdf = np.array(state["bond_f"], dtype=np.float64)
        self._bdi = np.array(state["bond_i"], dtype=np.int32)
        self._broken_seen = np.array(state["broken_seen"], dtype=bool)
        self.time = float(state["time"])
        self.steps = int(state["steps"])
        self.injected_energy = float(state["injected_energy"])
        if not np.array_equal(state["excluded"], self._excluded):
            self._excluded = np.array(state["excluded"], dtype=np.int32).reshape(-1, 2)
            self._geometry_changed = True
        self._upload = True


def _device(backend: Any, arr: np.ndarray, old: Any = None) -> Any:
    """Copy a host table into a device ndarray (reused when the shape fits; at least one row)."""
    shape = (max(arr.shape[0], 1), *arr.shape[1:])
    if old is None or tuple(old.shape) != shape:
        if arr.dtype == np.int32:
            old = backend.ndarray_i1(shape[0]) if arr.ndim == 1 else backend.ndarray_i(*shape)
        else:
            old = backend.ndarray_f(*shape)
    if arr.shape[0]:
        old.from_numpy(np.ascontiguousarray(arr))
    return old


def _pair_lists(pairs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-body lists of the other body of each pair (CSR): start (n + 1,), others (sorted by body).

    A pair with the ground (-1) is listed under its body only.
    """
    a = pairs[:, 0].astype(np.int64)
    b = pairs[:, 1].astype(np.int64)
    owner = np.concatenate([a, b[b >= 0]])
    other = np.concatenate([b, a[b >= 0]])
    order = np.argsort(owner, kind="stable")
    start = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(owner, minlength=n), out=start[1:])
    return start, other[order].astype(np.int32)


def _bond_lists(bdi: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-body lists of bond indices (CSR): start (n + 1,), bonds (2B,) sorted by body."""
    a = bdi[:, 0].astype(np.int64)
    b = bdi[:, 1].astype(np.int64)
    ids = np.arange(len(bdi), dtype=np.int32)
    owner = np.concatenate([a, b[b >= 0]])
    bond = np.concatenate([ids, ids[b >= 0]])
    order = np.argsort(owner, kind="stable")
    start = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(owner, minlength=n), out=start[1:])
    return start, bond[order].astype(np.int32)


def _qconj(q: np.ndarray) -> np.ndarray:
    return np.array([q[0], -q[1], -q[2], -q[3]])


def _qmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w = a[0] * b[0] - a[1:] @ b[1:]
    v = a[0] * b[1:] + b[0] * a[1:] + np.cross(a[1:], b[1:])
    return np.array([w, *v])


def _qrot(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _qrot_many(q[None], v[None])[0]


def _qrot_many(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    u = q[:, 1:]
    t = 2.0 * np.cross(u, v)
    return v + q[:, :1] * t + np.cross(u, t)


def _qmat(q: np.ndarray) -> np.ndarray:
    """(n, 4) wxyz -> (n, 3, 3) rotation matrices."""
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )

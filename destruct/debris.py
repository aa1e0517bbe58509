"""Rubble and dust born from breaking bonds (issue 5; DESIGN.md section 6, last paragraph).

:class:`DebrisSystem` is the host side of ``sim_kernels/debris.py``: it owns the particle tables,
turns broken bonds and charges into emission sources, and steps rubble (small rigid spheres that
collide with the ground, one way with the pieces' convex hulls, and land on rubble already at
rest, so they pile up; bits in flight pass through each other) and dust (passive particles:
drag, rise, curl-noise turbulence, growth and fade). The simulate stage drives it once per frame::

    debris = DebrisSystem(seed=shot.shot.seed, max_dust=shot.debris.max_particles,
                          dust=shot.debris.dust, materials=run_materials, ...)
    hulls = hull_planes_from_points(pieces["hull_vertices"], pieces["hull_offset"])   # once
    # per frame: World.step(dt, substeps) first, then
    debris.set_colliders(hulls, pieces["hull_piece"], w.positions(), w.rotations(),
                         w.velocities(), w.angular_velocities())
    debris.step(dt, substeps)                       # pieces move from last frame's poses to these
    new = w.new_breaks()
    pts = w.bond_points()[new]
    kin = break_inputs(bonds["pairs"][new], pts, bonds["areas"][new], w.positions(),
                       w.velocities(), w.angular_velocities(), w.masses())
    debris.emit_breaks(pts, bonds["normals"][new], bonds["areas"][new], kin["energies"],
                       kin["vel_a"], kin["vel_b"], pieces["material"][bonds["pairs"][new, 0]],
                       shot.debris.per_break, time=debris.time)
    # a charge that fires in this frame: debris.emit_burst(c.position, c.radius, c.impulse, debris.time)
    frame_arrays.update(debris.snapshot())

so every particle in a frame's snapshot is at the frame's time, like the pieces.
``run_materials`` are the run's materials in ``material_names`` order (material id = index).

Slots are ring buffers: the n-th rubble bit ever emitted lives in slot ``n % max_rubble`` (its
``rubble_id``), so ids are stable and only reused when the cap forces the oldest out; dust works
the same way with ``max_dust``. Rubble never expires; dust expires at the end of its lifetime.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from destruct.materials import PRESETS, Material

#: Reference fracture energy per unit of broken area [J/m^2]: about the fracture energy G_F of
#: normal-strength concrete (fib Model Code 2010, eq. 5.1-9: G_F = 73 f_cm^0.18 N/m, 135 J/m^2
#: for C30/37). A break that releases G_REF per m^2 emits ``per_break`` bits per m^2.
G_REF = 100.0
#: The count grows linearly with the break energy (Rittinger's law: new surface, and so the number
#: of fragments of a given size distribution, is proportional to the comminution energy), up to
#: this multiple of the reference count.
MAX_ENERGY_SCALE = 8.0
#: Spread speed of rubble [m/s] = SPREAD_K * sqrt(tensile / density) * sqrt(energy scale): the
#: square root of the specific strength is the velocity scale of the elastic energy a material
#: stores before it fails (about 1 m/s for concrete, 4 m/s for glass); SPREAD_K is perceptual.
SPREAD_K = 0.03
MAX_SPREAD = 30.0
DUST_PER_BIT = 4.0  # dust particles per rubble bit
DUST_R0, DUST_LIFE, DUST_RISE = 0.15, 5.0, 0.8  # break dust: radius [m], lifetime [s], rise [m/s]
#: A charge's burst: BURST_BITS rubble bits, BURST_DUST dust per bit and BURST_SPEED [m/s] outward
#: at IMPULSE_REF, scaling with sqrt(impulse / IMPULSE_REF).
IMPULSE_REF, BURST_BITS, BURST_SPEED, BURST_DUST = 1e4, 100.0, 4.0, 10.0
BURST_R0, BURST_LIFE, BURST_RISE = 0.4, 8.0, 1.5
TURBULENCE = 0.6  # curl-noise air speed scale [m/s]
TAU_DRAG = 0.4  # dust velocity relaxation time [s]
FADE_IN = 0.15  # dust opacity ramp at birth [s]
V_SLEEP, SLEEP_TIME, V_WAKE, WAKE_TOL = 0.05, 0.5, 0.05, 1e-3  # [m/s], [s], [m/s], [m]
#: Cell of the resting-rubble grid [m]: twice the largest contact distance (two of the largest
#: bits, plus the wake tolerance), so a bit's neighbours lie in the 2 x 2 x 2 nearest cells.
REST_CELL = 2 * (2 * 0.15 + 2 * WAKE_TOL)


FLAT_PAD = 5e-4  # [m] half-thickness given to a flat (zero-volume) hull
_CORNERS = np.array(
    [[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64
)


@dataclass(frozen=True)
class HullPlanes:
    """Convex hulls as planes, in each piece's local frame (from :func:`hull_planes_from_points`).

    ``planes: (K, 4) f64``: (n, d) with unit outward n; a point p is inside when n.p + d <= 0.
    ``plane_offset: (H + 1,) int64``: hull h owns ``planes[plane_offset[h]:plane_offset[h+1]]``.
    ``center: (H, 3) f64`` and ``radius: (H,) f64``: a bounding sphere of each hull [m].
    """

    planes: np.ndarray
    plane_offset: np.ndarray
    center: np.ndarray
    radius: np.ndarray

    @property
    def count(self) -> int:
        return len(self.radius)


def hull_planes_from_points(vertices, offset=None) -> HullPlanes:
    """Planes of the convex hull of each point set (scipy's Qhull ``equations``, coplanar facets
    merged). ``vertices``: ``(HV, 3)`` points with ``offset: (H + 1,)`` (the ``hull_vertices`` /
    ``hull_offset`` of ``fracture/pieces.npz``), or a list of ``(k, 3)`` arrays. A flat or
    degenerate set becomes a hull FLAT_PAD thicker each way rather than an unbounded slab."""
    from scipy.spatial import ConvexHull, QhullError

    if offset is None:
        sets = [np.asarray(v, dtype=np.float64).reshape(-1, 3) for v in vertices]
    else:
        pts = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
        off = np.asarray(offset, dtype=np.int64)
        sets = [pts[off[h] : off[h + 1]] for h in range(len(off) - 1)]
    planes = []
    center = np.zeros((len(sets), 3))
    radius = np.zeros(len(sets))
    for h, p in enumerate(sets):
        if len(p) == 0:
            raise ValueError(f"hull {h} has no points")
        lo, hi = p.min(axis=0), p.max(axis=0)
        center[h] = 0.5 * (lo + hi)
        radius[h] = np.linalg.norm(p - center[h], axis=1).max()
        try:
            planes.append(ConvexHull(p).equations)
        except QhullError:  # flat, a line or a point: give it FLAT_PAD of thickness each way
            planes.append(
                ConvexHull((p[:, None, :] + FLAT_PAD * _CORNERS[None]).reshape(-1, 3)).equations
            )
    # merge coplanar facets of each hull in one sort over all hulls: rows (hull, rounded plane)
    counts = np.array([len(e) for e in planes], dtype=np.int64)
    hull_of = np.repeat(np.arange(len(sets)), counts)
    eq = np.round(np.concatenate(planes), 9) if planes else np.zeros((0, 4))
    keys = np.column_stack([hull_of, eq])
    _, keep = np.unique(keys, axis=0, return_index=True)
    keep = np.sort(keep)
    return HullPlanes(
        planes=eq[keep],
        plane_offset=np.concatenate(
            [[0], np.cumsum(np.bincount(hull_of[keep], minlength=len(sets)))]
        ),
        center=center,
        radius=radius,
    )


def break_inputs(
    pairs, points, areas, positions, velocities, angular_velocities, masses
) -> dict[str, np.ndarray]:
    """The velocity and energy arguments of :meth:`DebrisSystem.emit_breaks` for broken bonds.

    ``pairs`` (n, 2) piece indices (-1 in the second column: the ground); ``points`` (n, 3) the
    bonds' current world points [m] (``World.bond_points()``); ``areas`` (n,) [m^2]; the pieces'
    ``positions`` (centres of mass), ``velocities``, ``angular_velocities`` (P, 3) and ``masses``
    (P,) [kg]. Returns ``vel_a``, ``vel_b`` (n, 3): each piece's velocity at the point, and
    ``energies`` (n,) [J]: the fracture energy of the face, G_REF * area, plus the kinetic energy
    of the pieces' relative motion at the point, 1/2 m_red |v_a - v_b|^2 with the reduced mass
    m_a m_b / (m_a + m_b) (m_a for a ground bond): quiet breaks emit the reference count, violent
    ones up to MAX_ENERGY_SCALE times more, thrown faster.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    n = len(pairs)
    pts = _f3(points, n, "points")
    area = _f1(areas, n, "areas")
    x = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    v = np.asarray(velocities, dtype=np.float64).reshape(-1, 3)
    w = np.asarray(angular_velocities, dtype=np.float64).reshape(-1, 3)
    m = np.asarray(masses, dtype=np.float64).reshape(-1)

    def at(i: np.ndarray) -> np.ndarray:
        ok = i >= 0
        out = np.zeros((n, 3))
        out[ok] = v[i[ok]] + np.cross(w[i[ok]], pts[ok] - x[i[ok]])
        return out

    a, b = pairs[:, 0], pairs[:, 1]
    va, vb = at(a), at(b)
    ma, mb = m[a], m[np.maximum(b, 0)]
    m_red = np.where(b >= 0, ma * mb / (ma + mb), ma)
    kinetic = 0.5 * m_red * np.sum((va - vb) ** 2, axis=1)
    return {"vel_a": va, "vel_b": vb, "energies": G_REF * area + kinetic}


def _newest(counts: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Particles per source -> (starts, counts) of the ones that survive a cap of ``cap`` slots,
    the total drawn and how many of the oldest were dropped. When one call draws more particles
    than there are slots, only the newest ``cap`` are made (no two writes race for a slot)."""
    counts = counts.astype(np.int64)
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    skip = max(0, total - cap)
    starts = ends - counts
    new_starts = np.maximum(starts - skip, 0)
    new_counts = np.maximum(ends - skip, 0) - new_starts
    return new_starts.astype(np.int32), new_counts.astype(np.int32), total, skip


def _f3(a, n: int, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.shape != (n, 3):
        raise ValueError(f"{name} must have shape ({n}, 3), got {a.shape}")
    return a


def _f1(a, n: int, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    return a


class DebrisSystem:
    """Rubble and dust particles in ring-buffer slots, stepped by Taichi kernels. SI units.

    ``materials``: the run's materials in order (index = material id in ``emit_breaks``); the
    rubble takes its friction and restitution and the spread of a break from them.
    ``backend`` / ``threads``: as ``sim_kernels.backend.init`` (Taichi is set up once per process).
    """

    def __init__(
        self,
        *,
        seed: int,
        max_rubble: int = 50_000,
        max_dust: int = 200_000,
        dust: bool = True,
        gravity=(0, -9.81, 0),
        ground: bool = True,
        backend: str = "cpu",
        threads: int = 0,
        materials: Sequence[Material] | None = None,
    ) -> None:
        from sim_kernels import backend as B
        from sim_kernels import debris as K

        if max_rubble < 0 or max_dust < 0:
            raise ValueError(f"max_rubble and max_dust must be >= 0, got {max_rubble}, {max_dust}")
        self.arch = B.init(backend, threads)
        self._K, self._B = K, B
        self.seed = int(seed)
        self._seed32 = (self.seed ^ (self.seed >> 32)) & 0xFFFFFFFF
        self.max_rubble, self.max_dust = int(max_rubble), int(max_dust)
        self.dust = bool(dust)
        self.gravity = tuple(float(g) for g in gravity)
        self.ground = bool(ground)
        mats = list(materials) if materials else [PRESETS["concrete"]]
        self.materials = mats
        self._mat = self._upload(np.array([[m.friction, m.restitution] for m in mats]))
        self._spec = np.array([math.sqrt(m.tensile / m.density) for m in mats])

        self._rf = B.ndarray_f(self.max_rubble, K.NRF)
        self._ri = B.ndarray_i(self.max_rubble, K.NRI)
        self._df = B.ndarray_f(self.max_dust, K.NDF)
        self._modes = self._upload(self._noise_modes(self.seed))
        self.time = 0.0  # [s], advanced by step(); emissions are dated on the same clock
        self._rubble_serial = 0  # rubble bits ever emitted
        self._dust_serial = 0
        self._source_serial = 0  # emission sources ever drawn (random stream for their counts)
        self.peak_rubble = 0
        self.peak_dust = 0
        # colliders
        self._hulls: HullPlanes | None = None
        self._hull_piece: np.ndarray | None = None
        # (P, 7) position + wxyz of the pieces at the start of the next step, and at its end
        self._pose0: np.ndarray | None = None
        self._pose1: np.ndarray | None = None
        self._vel: np.ndarray | None = None  # (P, 6) velocity + angular velocity
        self._grid_t = 0
        # nothing emitted and no bit woke or fell asleep in the last step: the sleeping bits and
        # their grid are as they were (and, with static hulls, stay asleep without a check)
        self._quiet = False
        self._rest_args: tuple | None = None

    # ---- allocation helpers ----

    def _upload(self, a: np.ndarray, dtype=np.float64):
        """A device ndarray holding ``a`` as ``dtype`` (float64 or int32; at least one row)."""
        return self._B.upload(np.asarray(a, dtype=dtype))

    @staticmethod
    def _noise_modes(seed: int, per_component: int = 4) -> np.ndarray:
        """Curl-noise modes: wavelengths 3..12 m, random directions and phases, slow drift."""
        from sim_kernels import debris as K

        rng = np.random.default_rng([abs(int(seed)), 5])
        m = 3 * per_component
        d = rng.normal(size=(m, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        kmag = 2 * np.pi / rng.uniform(3.0, 12.0, size=m)
        modes = np.zeros((m, K.NMODE))
        modes[:, K.MK : K.MK + 3] = d * kmag[:, None]
        modes[:, K.MPHASE] = rng.uniform(0, 2 * np.pi, size=m)
        modes[:, K.MOMEGA] = rng.uniform(-0.5, 0.5, size=m) * kmag  # drift about 0.5 m/s
        # each mode adds amp * |k| to the air speed; sum of m modes in random phase ~ sqrt(m)
        modes[:, K.MAMP] = TURBULENCE / (kmag * math.sqrt(m / 2))
        return modes

    # ---- counts ----

    @property
    def live_rubble(self) -> int:
        return min(self._rubble_serial, self.max_rubble)

    @property
    def _dust_used(self) -> int:
        """Dust slots in use so far (slots fill from 0)."""
        return min(self._dust_serial, self.max_dust)

    @property
    def live_dust(self) -> int:
        if self._dust_serial == 0:
            return 0
        return int(self._K.dust_live(self._df, self.time, self._dust_used))

    # ---- emission ----

    def emit_breaks(
        self,
        points,
        normals,
        areas,
        energies,
        vel_a,
        vel_b,
        material,
        per_break: float,
        time: float,
    ) -> None:
        """Rubble and dust from n broken bonds.

        ``points``/``normals`` (n, 3): the bond faces' centroids [m] and unit normals; ``areas``
        (n,) [m^2]; ``energies`` (n,) energy released by each break [J]; ``vel_a``/``vel_b``
        (n, 3): the two pieces' velocities at the point [m/s] (equal for a ground bond);
        ``material`` (n,) int: material id; ``per_break``: bits per m^2 at the reference energy
        ``G_REF * area``; ``time``: the shot time of the breaks [s] on the :attr:`time` clock.

        Expected bits per bond = per_break * area * clip(energy / (G_REF * area), 0, 8); the count
        is that number rounded up with the probability of its fraction. Dust: DUST_PER_BIT per bit.
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        n = len(pts)
        if n == 0:
            return
        nrm = _f3(normals, n, "normals")
        area = _f1(areas, n, "areas")
        energy = _f1(energies, n, "energies")
        vel = 0.5 * (_f3(vel_a, n, "vel_a") + _f3(vel_b, n, "vel_b"))
        mat = np.asarray(material, dtype=np.int64).reshape(-1)
        if mat.shape != (n,) or (n and (mat.min() < 0 or mat.max() >= len(self.materials))):
            raise ValueError(f"material must be {n} ids in 0..{len(self.materials) - 1}, got {mat}")
        if per_break < 0 or not np.all(np.isfinite(area)) or np.any(area < 0):
            raise ValueError(f"per_break and areas must be finite and >= 0, got {per_break}")
        ok = np.isfinite(pts).all(1) & np.isfinite(nrm).all(1) & np.isfinite(vel).all(1)
        if not ok.all():  # a broken bond on a piece the solver lost: emit nothing there
            pts, nrm, area, energy, vel, mat = (
                pts[ok],
                nrm[ok],
                area[ok],
                energy[ok],
                vel[ok],
                mat[ok],
            )
            n = len(pts)
            if n == 0:
                return
        area_pos = np.maximum(area, 1e-12)
        scale = np.clip(np.nan_to_num(energy) / (G_REF * area_pos), 0.0, MAX_ENERGY_SCALE)
        scale[area <= 0] = 0.0
        lam = per_break * area * scale
        src = np.zeros((n, self._K.NSF))
        K = self._K
        src[:, K.SP : K.SP + 3] = pts
        norm = np.linalg.norm(nrm, axis=1, keepdims=True)
        src[:, K.SN : K.SN + 3] = np.where(norm > 0, nrm / np.maximum(norm, 1e-12), [0.0, 1.0, 0.0])
        src[:, K.SVEL : K.SVEL + 3] = vel
        src[:, K.SDISC] = np.sqrt(area / np.pi)
        src[:, K.SSPREAD] = np.minimum(SPREAD_K * self._spec[mat] * np.sqrt(scale), MAX_SPREAD)
        src[:, K.SRMAX] = np.clip(0.5 * np.sqrt(area), K.R_MIN, K.R_MAX)
        src[:, K.SLAM] = np.minimum(lam, self.max_rubble)
        src[:, K.SLAMD] = np.minimum(DUST_PER_BIT * lam, self.max_dust) if self.dust else 0.0
        src[:, K.SDR0] = DUST_R0
        src[:, K.SDLIFE] = DUST_LIFE
        src[:, K.SDRISE] = DUST_RISE
        self._emit(src, mat, time)

    def emit_burst(
        self, position, radius: float, impulse: float, time: float, material: int = 0
    ) -> None:
        """A charge's burst: rubble and dust thrown outwards from a ball of ``radius`` [m] around
        ``position`` [m]; count and speed grow with sqrt(impulse / IMPULSE_REF) ([N s])."""
        if not (radius > 0 and impulse >= 0 and math.isfinite(impulse)):
            raise ValueError(f"burst radius must be > 0 and impulse >= 0, got {radius}, {impulse}")
        if not 0 <= material < len(self.materials):
            raise ValueError(f"material must be in 0..{len(self.materials) - 1}, got {material}")
        K = self._K
        f = math.sqrt(impulse / IMPULSE_REF)
        src = np.zeros((1, K.NSF))
        src[0, K.SP : K.SP + 3] = np.asarray(position, dtype=np.float64).reshape(3)
        src[0, K.SDISC] = 0.5 * radius
        src[0, K.SSPREAD] = min(BURST_SPEED * f, MAX_SPREAD)
        src[0, K.SRMAX] = K.R_MAX
        lam = BURST_BITS * f
        src[0, K.SLAM] = min(lam, self.max_rubble)
        src[0, K.SLAMD] = min(BURST_DUST * lam, self.max_dust) if self.dust else 0.0
        src[0, K.SDR0] = BURST_R0
        src[0, K.SDLIFE] = BURST_LIFE
        src[0, K.SDRISE] = BURST_RISE
        self._emit(src, np.array([material]), time)

    def _emit(self, src: np.ndarray, mat: np.ndarray, time: float) -> None:
        K = self._K
        n = len(src)
        srci = np.zeros((n, K.NSI), dtype=np.int32)
        srci[:, K.SMAT] = mat
        src_t = self._upload(src)
        srci_t = self._upload(srci, np.int32)
        K.draw_counts(src_t, n, self._seed32, self._source_serial, srci_t)
        self._source_serial += n
        srci = srci_t.to_numpy()
        skips = []
        for start, count, cap in (
            (K.RSTART, K.RCOUNT, self.max_rubble),
            (K.DSTART, K.DCOUNT, self.max_dust),
        ):
            srci[:, start], srci[:, count], total, skip = _newest(srci[:, count], cap)
            skips.append((total, skip))
        srci_t.from_numpy(srci)
        (n_r, skip_r), (n_d, skip_d) = skips
        if n_r and self.max_rubble:
            K.emit_rubble(
                src_t,
                srci_t,
                n,
                self._mat,
                self._seed32,
                self._rubble_serial + skip_r,
                float(time),
                self._rf,
                self._ri,
            )
            self._rubble_serial += n_r
            self._quiet = False  # new bits, and maybe a recycled sleeping slot
        if n_d and self.max_dust:
            K.emit_dust(
                src_t, srci_t, n, self._seed32, self._dust_serial + skip_d, float(time), self._df
            )
            self._dust_serial += n_d
        self.peak_rubble = max(self.peak_rubble, self.live_rubble)
        self.peak_dust = max(self.peak_dust, self.live_dust)

    # ---- colliders ----

    def set_colliders(
        self,
        hull_planes: HullPlanes,
        hull_piece,
        positions,
        rotations,
        velocities,
        angular_velocities,
    ) -> None:
        """The pieces' hulls and their poses at the end of the coming step (centre of mass [m],
        wxyz, velocity [m/s], angular velocity [rad/s]). The substeps of :meth:`step` move the
        hulls from the previous call's poses to these (the first call: no motion)."""
        K = self._K
        pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        p = len(pos)
        rot = np.asarray(rotations, dtype=np.float64).reshape(p, 4)
        vel = _f3(velocities, p, "velocities")
        ang = _f3(angular_velocities, p, "angular_velocities")
        piece = np.asarray(hull_piece, dtype=np.int64).reshape(-1)
        if len(piece) != hull_planes.count or (
            len(piece) and (piece.min() < 0 or piece.max() >= p)
        ):
            raise ValueError(f"hull_piece must be {hull_planes.count} piece ids in 0..{p - 1}")
        if hull_planes is not self._hulls or not np.array_equal(piece, self._hull_piece):
            hi = np.zeros((max(hull_planes.count, 1), K.NHI), dtype=np.int32)
            hi[: hull_planes.count, K.PLANE0] = hull_planes.plane_offset[:-1]
            hi[: hull_planes.count, K.NPLANE] = np.diff(hull_planes.plane_offset)
            hi[: hull_planes.count, K.PIECE] = piece
            self._hp = self._upload(hull_planes.planes.reshape(-1, 4))
            self._hf = self._upload(np.column_stack([hull_planes.center, hull_planes.radius]))
            self._hi = self._upload(hi, np.int32)
            diam = 2 * hull_planes.radius if hull_planes.count else np.ones(1)
            # cells about the size of a typical hull; big hulls span at most ~32 cells a side
            self._cell = float(max(2 * (K.R_MAX + 0.05), np.median(diam), diam.max() / 32))
            self._hulls, self._hull_piece = hull_planes, piece.copy()
        if not (
            np.isfinite(pos).all()
            and np.isfinite(rot).all()
            and np.isfinite(vel).all()
            and np.isfinite(ang).all()
        ):
            raise ValueError("set_colliders: piece poses and velocities must be finite")
        pose = np.column_stack([pos, rot / np.linalg.norm(rot, axis=1, keepdims=True)])
        if self._pose1 is None or len(self._pose1) != p:
            self._pose0 = pose
        self._pose1 = pose
        self._vel = np.column_stack([vel, ang])

    def _build_grid(self) -> bool:
        """Counting-sort the hulls into the hashed grid for this step; False without colliders."""
        K, B = self._K, self._B
        if self._hulls is None or self._hulls.count == 0:
            return False
        nh = self._hulls.count
        pp = np.zeros((len(self._pose1), K.NPP))
        pp[:, K.PX0 : K.PX0 + 3], pp[:, K.PQ0 : K.PQ0 + 4] = self._pose0[:, :3], self._pose0[:, 3:]
        pp[:, K.PX1 : K.PX1 + 3], pp[:, K.PQ1 : K.PQ1 + 4] = self._pose1[:, :3], self._pose1[:, 3:]
        pp[:, K.PV : K.PV + 3], pp[:, K.PW : K.PW + 3] = self._vel[:, :3], self._vel[:, 3:]
        self._pp = self._upload(pp)
        ncell = B.empty_i(nh)
        if getattr(self, "_hs", None) is None or self._hs.shape[0] != nh:
            self._hs = B.empty_f(nh, 4)
        K.hull_cells(self._hf, self._hi, nh, self._pp, K.R_MAX + 0.05, self._cell, ncell, self._hs)
        total = int(ncell.to_numpy().astype(np.int64).sum())
        t = 1 << max(6, math.ceil(math.log2(2 * total + 1)))
        if t != self._grid_t:
            self._count = B.ndarray_i1(t)
            self._cursor = B.empty_i(t)
            self._start = B.empty_i(t + 1)
            self._grid_t = t
        if getattr(self, "_cell_hull", None) is None or self._cell_hull.shape[0] < total:
            self._cell_hull = B.empty_i(max(total, 1))
        K.grid_count(self._hi, nh, t - 1, self._count)
        K.grid_prefix(self._count, t, self._start)  # also zeroes count for the next step
        self._cursor.fill(0)
        K.grid_fill(self._hi, nh, t - 1, self._start, self._cursor, self._cell_hull)
        K.grid_sort(t, self._start, self._cell_hull)
        return True

    def _build_rest_grid(self) -> tuple:
        """Counting-sort the sleeping bits into the resting-rubble grid (kernel arguments); the
        last grid is reused while the set of sleeping bits cannot have changed."""
        if self._quiet and self._rest_args is not None:
            return self._rest_args
        K, B = self._K, self._B
        used = self.live_rubble
        t = 1 << max(6, math.ceil(math.log2(2 * used + 1)))
        if t != getattr(self, "_rest_t", 0):
            self._rest_count = B.ndarray_i1(t)
            self._rest_cursor = B.empty_i(t)
            self._rest_start = B.empty_i(t + 1)
            self._rest_t = t
        if getattr(self, "_rest", None) is None or self._rest.shape[0] < used:
            self._rest = B.empty_i(max(used, 1))
            self._rest_x = B.empty_f(max(used, 1), 4)
        cell = REST_CELL
        n = K.rest_count(self._rf, self._ri, used, t - 1, cell, self._rest_count)
        K.grid_prefix(self._rest_count, t, self._rest_start)  # also zeroes the counts
        if n:
            self._rest_cursor.fill(0)
            K.rest_fill(
                self._rf,
                self._ri,
                used,
                t - 1,
                cell,
                self._rest_start,
                self._rest_cursor,
                self._rest,
            )
            K.grid_sort(t, self._rest_start, self._rest)
            K.rest_pack(self._rf, self._rest, n, self._rest_x)
        self._rest_args = (self._rest_start, self._rest, self._rest_x, t - 1, cell, int(n > 0))
        return self._rest_args

    # ---- stepping ----

    def step(self, dt: float, substeps: int) -> None:
        """Advance by dt [s]: rubble in ``substeps`` substeps against the ground, the hulls
        (moving from the previous to the latest :meth:`set_colliders` poses) and the bits that
        were at rest; dust in one exact drag update; then the clock moves on by dt."""
        K = self._K
        if not (dt > 0 and math.isfinite(dt)) or int(substeps) < 1:
            raise ValueError(f"dt must be > 0 and substeps >= 1, got {dt}, {substeps}")
        substeps = int(substeps)
        if self.live_rubble:
            has = self._build_grid()
            if has:
                grid = (
                    self._hp,
                    self._hi,
                    self._hs,
                    self._pp,
                    self._start,
                    self._cell_hull,
                    self._grid_t - 1,
                    self._cell,
                    1,
                )
            else:
                dummy_i = self._B.ndarray_i1(2)
                grid = (self._mat, self._ri, self._mat, self._mat, dummy_i, dummy_i, 0, 1.0, 0)
            gx, gy, gz = self.gravity
            static = self._pose1 is None or (
                np.array_equal(self._pose0, self._pose1) and not self._vel.any()
            )
            changed = K.rubble_step(
                self._rf,
                self._ri,
                dt,
                substeps,
                gx,
                gy,
                gz,
                int(self.ground),
                *grid,
                *self._build_rest_grid(),
                V_SLEEP,
                max(1, math.ceil(SLEEP_TIME / dt)),
                V_WAKE,
                WAKE_TOL,
                self.live_rubble,
                int(not (self._quiet and static)),
            )
            self._quiet = changed == 0
        if self._dust_serial:
            K.dust_step(
                self._df,
                dt,
                self.time + dt,
                self._modes,
                self._modes.shape[0] // 3,
                TAU_DRAG,
                0.5 * DUST_LIFE,
                int(self.ground),
                self._dust_used,
            )
        self.time += dt
        if self._pose1 is not None:
            self._pose0 = self._pose1
        self.peak_dust = max(self.peak_dust, self.live_dust)

    # ---- output and checkpoints ----

    def snapshot(self) -> dict[str, np.ndarray]:
        """The live particles as float32/int32 arrays under the sim frame keys of
        docs/FORMATS.md (rubble sorted by id; dust radius grows and alpha fades with age), plus
        ``rubble_age`` and ``dust_age`` (R,) / (D,) f32: seconds since emission."""
        K = self._K
        rf, ri = self._used(self._rf, self.live_rubble), self._used(self._ri, self.live_rubble)
        alive = ri[:, K.ALIVE] == 1
        r = rf[alive]
        out = {
            "rubble_id": np.nonzero(alive)[0].astype(np.int32),
            "rubble_position": r[:, K.X : K.X + 3].astype(np.float32),
            "rubble_rotation": r[:, K.Q : K.Q + 4].astype(np.float32),
            "rubble_velocity": r[:, K.V : K.V + 3].astype(np.float32),
            "rubble_radius": r[:, K.RAD].astype(np.float32),
            "rubble_material": ri[alive, K.MAT].astype(np.int32),
            "rubble_age": (self.time - r[:, K.BIRTH]).astype(np.float32),
        }
        df = self._used(self._df, self._dust_used)
        life = df[:, K.DLIFE]
        age = self.time - df[:, K.DBIRTH]
        live = (life > 0) & (age >= 0) & (age < life)
        d, age, life = df[live], age[live], life[live]
        u = age / life
        out["dust_position"] = d[:, K.DX : K.DX + 3].astype(np.float32)
        out["dust_velocity"] = d[:, K.DV : K.DV + 3].astype(np.float32)
        out["dust_radius"] = (d[:, K.DR0] * (1 + (d[:, K.DGROW] - 1) * np.sqrt(u))).astype(
            np.float32
        )
        out["dust_alpha"] = (d[:, K.DA0] * np.minimum(age / FADE_IN, 1.0) * (1 - u) ** 2).astype(
            np.float32
        )
        out["dust_age"] = age.astype(np.float32)
        return out

    def _used(self, table, n: int) -> np.ndarray:
        """The first n rows of a table as numpy: ring slots fill from 0, so they are the used ones."""
        B, K = self._B, self._K
        cols = table.shape[1]
        is_f = B.is_float(table)
        if n == 0:
            return np.zeros((0, cols), dtype=np.float64 if is_f else np.int32)
        if n == table.shape[0]:
            return table.to_numpy()
        out = (B.empty_f if is_f else B.empty_i)(n, cols)
        (K.copy_rows_f if is_f else K.copy_rows_i)(table, n, out)
        return out.to_numpy()

    def state(self) -> dict[str, np.ndarray]:
        """Everything a resumed run needs to continue bit-identically (keys ``debris_*``): the
        used rows of the particle tables (slots fill from 0; the rest are zeros), the counters
        that key the random numbers, the clock and the colliders' last poses."""
        pose = self._pose0 if self._pose0 is not None else np.zeros((0, 7))
        return {
            "debris_rubble_f": self._used(self._rf, self.live_rubble),
            "debris_rubble_i": self._used(self._ri, self.live_rubble),
            "debris_dust_f": self._used(self._df, self._dust_used),
            "debris_counters": np.array(
                [
                    self._rubble_serial,
                    self._dust_serial,
                    self._source_serial,
                    self.peak_rubble,
                    self.peak_dust,
                    self.seed,
                    self.max_rubble,
                    self.max_dust,
                    int(self._quiet),
                ],
                dtype=np.int64,
            ),
            "debris_time": np.array(self.time, dtype=np.float64),
            "debris_collider_pose": np.asarray(pose, dtype=np.float64),
        }

    def load_state(self, d) -> None:
        """Restore :meth:`state` (written with the same caps and seed)."""
        c = np.asarray(d["debris_counters"], dtype=np.int64)
        if (int(c[6]), int(c[7])) != (self.max_rubble, self.max_dust):
            raise ValueError(
                f"the debris checkpoint was written with particle caps {int(c[6])}, "
                f"{int(c[7])}; this DebrisSystem has {self.max_rubble}, {self.max_dust}"
            )
        if int(c[5]) != self.seed:
            raise ValueError(
                f"the debris checkpoint was written with seed {int(c[5])}, not {self.seed}"
            )
        for key, arr, dtype in (
            ("debris_rubble_f", self._rf, np.float64),
            ("debris_rubble_i", self._ri, np.int32),
            ("debris_dust_f", self._df, np.float64),
        ):
            rows = np.asarray(d[key], dtype=dtype)
            full = np.zeros(tuple(arr.shape), dtype=dtype)
            full[: len(rows)] = rows
            arr.from_numpy(full)
        self._rubble_serial, self._dust_serial, self._source_serial = (
            int(c[0]),
            int(c[1]),
            int(c[2]),
        )
        self.peak_rubble, self.peak_dust = int(c[3]), int(c[4])
        self._quiet, self._rest_args = bool(c[8]), None
        self.time = float(np.asarray(d["debris_time"]))
        pose = np.asarray(d["debris_collider_pose"], dtype=np.float64)
        self._pose0 = self._pose1 = pose.copy() if len(pose) else None

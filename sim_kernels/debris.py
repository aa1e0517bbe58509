"""Debris and dust kernels: emission, rubble integration with ground and piece contacts, dust.

The host class :class:`destruct.debris.DebrisSystem` owns the tables and calls these kernels in
order. Every random number is a counter-based hash of (seed, particle serial number, stream), so
results never depend on thread scheduling: a particle's draws are the same whichever thread
creates it. Within a step a moving bit only meets things whose path is known (hulls on interpolated poses,
the ground, bits asleep since the step began), so every particle advances on its own (no float
atomics) and every parallel loop is deterministic; the only atomics are integer counts in the
grids, and each grid bucket is sorted afterwards.

Tables (one row per particle slot; columns named below):

``rf: (max_rubble, NRF) f64``
    X position [m] (3), Q rotation wxyz (4), V velocity [m/s] (3), W angular velocity [rad/s]
    (3), RAD radius [m], MU friction coefficient, REST restitution, BIRTH emission time [s].
``ri: (max_rubble, NRI) i32``
    ALIVE (1 = in use), SLEEP (1 = at rest, not integrated), CALM steps in a row at rest,
    MAT material index.
``df: (max_dust, NDF) f64``
    DX position [m] (3), DV velocity [m/s] (3), DBIRTH emission time [s], DLIFE lifetime [s]
    (0 = free slot), DR0 radius at birth [m], DGROW radius at the end of life / at birth,
    DA0 peak opacity, DRISE rise speed at birth [m/s].

Emission sources (one row per broken bond or burst):

``src: (n, NSF) f64``
    SP point [m] (3), SN unit normal (3; zero = a radial burst), SVEL mean velocity [m/s] (3),
    SDISC offset radius [m], SSPREAD spread speed [m/s], SRMAX largest rubble radius [m],
    SLAM expected rubble count, SLAMD expected dust count, SDR0 dust radius [m], SDLIFE dust
    lifetime [s], SDRISE dust rise speed [m/s].
``srci: (n, NSI) i32``
    SMAT material index, RSTART / RCOUNT first serial (relative) and number of rubble bits,
    DSTART / DCOUNT the same for dust.
``mat: (M, NMF) f64``
    MMU friction, MREST restitution.

Colliders (the pieces' convex hulls; pieces push rubble, rubble does not push pieces):

``hp: (K, 4) f64``      plane (n, d) in the piece frame; a point p is inside when n.p + d <= 0
``hf: (H, 4) f64``      HC bounding-sphere centre in the piece frame [m] (3), HR its radius [m]
``hi: (H, NHI) i32``    PLANE0 first plane row, NPLANE plane count, PIECE piece index,
                        LO / HI (3 each) the range of grid cells the hull was inserted into
``pp: (P, NPP) f64``    PX0 / PQ0 pose at the start of the step, PX1 / PQ1 at its end (the
                        substeps interpolate), PV velocity [m/s], PW angular velocity [rad/s]
``hs: (H, 4) f64``      this step's swept bounding sphere of each hull: centre [m] (3), radius
Dust air: ``modes: (3 * per, NMODE) f64`` curl-noise modes, ``per`` for each potential component:
MK wave vector [1/m] (3), MPHASE [rad], MOMEGA drift [rad/s], MAMP amplitude [m^2/s].
Grids: ``cell_start: (T + 1,) i32`` bucket offsets into ``cell_hull: (E,) i32``; T is a power of
two; a cell (i, j, k) of edge ``cell`` [m] lives in bucket ``hash(i, j, k) & (T - 1)``. The
resting-rubble grid is the same with ``rest: (S,) i32`` slots and ``rest_x: (S, 4) f64`` their
centres [m] (3) and radii [m], copied at the start of the step.
"""

import math

from sim_kernels.backend import (
    F2,
    I1,
    I2,
    f64,
    get3,
    get4,
    i32,
    quat_add_rotation,
    quat_conj,
    quat_rotate,
    set3,
    set4,
    ti,
    vec3,
    vec4,
)

X, Q, V, W, RAD, MU, REST, BIRTH = 0, 3, 7, 10, 13, 14, 15, 16
NRF = 17
ALIVE, SLEEP, CALM, MAT = 0, 1, 2, 3
NRI = 4
DX, DV, DBIRTH, DLIFE, DR0, DGROW, DA0, DRISE = 0, 3, 6, 7, 8, 9, 10, 11
NDF = 12
SP, SN, SVEL, SDISC, SSPREAD, SRMAX = 0, 3, 6, 9, 10, 11
SLAM, SLAMD, SDR0, SDLIFE, SDRISE = 12, 13, 14, 15, 16
NSF = 17
SMAT, RSTART, RCOUNT, DSTART, DCOUNT = 0, 1, 2, 3, 4
NSI = 5
MMU, MREST = 0, 1
NMF = 2
HC, HR = 0, 3
PLANE0, NPLANE, PIECE, LO, HI = 0, 1, 2, 3, 6
NHI = 9
PX0, PQ0, PX1, PQ1, PV, PW = 0, 3, 7, 10, 14, 17
NPP = 20
# curl-noise modes: wave vector [1/m] (3), phase [rad], drift [rad/s], amplitude [m^2/s]
MK, MPHASE, MOMEGA, MAMP = 0, 3, 4, 5
NMODE = 6

#: Rubble radius range [m] and the exponent D of the power-law size distribution
#: N(> r) ~ r^-D: fragments of crushed rock and concrete follow it with D about 2.5
#: (Turcotte, "Fractals and fragmentation", J. Geophys. Res. 91, 1986).
R_MIN, R_MAX, SIZE_D = 0.02, 0.15, 2.5
POP_SPEED = 1.0  # [m/s] the fastest a bit is pushed out of a resting bit it overlaps
MAX_SWEEP = 32  # [cells] the largest swept radius a hull is inserted into the grid with

# Random streams: each draw of a particle has its own stream number.
_S_COUNT_R, _S_COUNT_D = 1, 2
_S_SIZE, _S_SIDE, _S_DISC_R, _S_DISC_A, _S_G0, _S_G1, _S_G2, _S_G3 = 10, 11, 12, 13, 14, 15, 16, 17
_S_SPEED, _S_Q0, _S_Q1, _S_Q2, _S_W0, _S_W1, _S_W2, _S_W3 = 18, 19, 20, 21, 22, 23, 24, 25
_S_LIFE, _S_GROW, _S_ALPHA, _S_RISE, _S_R0 = 30, 31, 32, 33, 34

# ---- counter-based random numbers --------------------------------------------------------------


@ti.func
def pcg(v):
    """PCG-RXS-M-XS 32-bit output hash (O'Neill 2014; as a GPU hash: Jarzynski & Olano, JCGT 2020)."""
    s = v * ti.u32(747796405) + ti.u32(2891336453)
    w = ((s >> ((s >> ti.u32(28)) + ti.u32(4))) ^ s) * ti.u32(277803737)
    return (w >> ti.u32(22)) ^ w


@ti.func
def rnd(seed, serial, stream: ti.template()) -> f64:
    """Uniform in (0, 1) from (seed: u32, serial: i64, stream), the same on every thread."""
    lo = ti.cast(serial, ti.u32)
    hi = ti.cast(serial >> 32, ti.u32)
    h = pcg(seed ^ pcg(lo ^ pcg(hi ^ pcg(ti.u32(stream)))))
    return (ti.cast(h >> ti.u32(1), f64) + 0.5) * (1.0 / 2147483648.0)


@ti.func
def gauss2(seed, serial, s0: ti.template(), s1: ti.template()):
    """Two independent standard normal numbers (Box-Muller)."""
    r = ti.sqrt(-2.0 * ti.log(rnd(seed, serial, s0)))
    a = 2.0 * math.pi * rnd(seed, serial, s1)
    return vec3(r * ti.cos(a), r * ti.sin(a), 0.0)


@ti.func
def gauss3(
    seed, serial, s0: ti.template(), s1: ti.template(), s2: ti.template(), s3: ti.template()
) -> vec3:
    a = gauss2(seed, serial, s0, s1)
    b = gauss2(seed, serial, s2, s3)
    return vec3(a[0], a[1], b[0])


@ti.func
def tangent_basis(n):
    """Two unit vectors orthogonal to unit n and to each other."""
    a = vec3(1.0, 0.0, 0.0)
    if ti.abs(n[0]) > 0.9:
        a = vec3(0.0, 1.0, 0.0)
    t1 = n.cross(a).normalized()
    return t1, n.cross(t1)


# ---- emission ----------------------------------------------------------------------------------


@ti.kernel
def draw_counts(src: F2, n: i32, seed: ti.u32, serial0: ti.i64, srci: I2):
    """Integer counts per source: the expected count rounded up with probability of its fraction."""
    for s in range(n):
        lam = src[s, SLAM]
        k = ti.floor(lam)
        srci[s, RCOUNT] = ti.cast(k, i32) + ti.select(
            rnd(seed, serial0 + s, _S_COUNT_R) < lam - k, 1, 0
        )
        lamd = src[s, SLAMD]
        kd = ti.floor(lamd)
        srci[s, DCOUNT] = ti.cast(kd, i32) + ti.select(
            rnd(seed, serial0 + s, _S_COUNT_D) < lamd - kd, 1, 0
        )


@ti.func
def emit_offset(src: ti.template(), s, seed, serial, side):
    """Where a particle starts relative to its source point, and the unit direction it leaves in.

    A bond source spreads particles over a disc of radius SDISC in the bond plane, on one side;
    a burst (zero normal) fills a ball of radius SDISC and throws outwards.
    """
    n = get3(src, s, SN)
    g = gauss3(seed, serial, _S_G0, _S_G1, _S_G2, _S_G3)
    off = vec3(0.0)
    d = vec3(0.0, 1.0, 0.0)
    if n.norm() > 0.5:
        t1, t2 = tangent_basis(n)
        rr = src[s, SDISC] * ti.sqrt(rnd(seed, serial, _S_DISC_R))
        a = 2.0 * math.pi * rnd(seed, serial, _S_DISC_A)
        off = rr * (ti.cos(a) * t1 + ti.sin(a) * t2)
        d = (g + side * n).normalized()  # a broad cone about the face normal
    else:
        u = g.normalized()
        off = src[s, SDISC] * ti.pow(rnd(seed, serial, _S_DISC_R), 1.0 / 3.0) * u
        d = (u + vec3(0.0, 0.3, 0.0)).normalized()
    return off, d


@ti.kernel
def emit_rubble(
    src: F2, srci: I2, n: i32, mat: F2, seed: ti.u32, serial0: ti.i64, birth: f64, rf: F2, ri: I2
):
    """New rubble bits: serial = serial0 + RSTART + j goes to slot serial % capacity (the host
    trims a call to at most capacity bits, so no two writes race for a slot)."""
    cap = rf.shape[0]
    for s in range(n):
        m = srci[s, SMAT]
        n_hat = get3(src, s, SN)
        for j in range(srci[s, RCOUNT]):
            serial = serial0 + srci[s, RSTART] + j
            slot = ti.cast(serial % cap, i32)
            # truncated power law on [R_MIN, rmax]: inverse of the CDF
            b = ti.max(src[s, SRMAX], R_MIN)
            lo = ti.pow(R_MIN, -SIZE_D)
            r = ti.pow(lo - rnd(seed, serial, _S_SIZE) * (lo - ti.pow(b, -SIZE_D)), -1.0 / SIZE_D)
            side = ti.select(rnd(seed, serial, _S_SIDE) < 0.5, -1.0, 1.0)
            off, d = emit_offset(src, s, seed, serial, side)
            speed = src[s, SSPREAD] * (0.5 + rnd(seed, serial, _S_SPEED))
            set3(rf, slot, X, get3(src, s, SP) + off + side * r * n_hat)
            set3(rf, slot, V, get3(src, s, SVEL) + speed * d)
            # uniform random orientation (Shoemake, Graphics Gems III, 1992)
            u1 = rnd(seed, serial, _S_Q0)
            a2 = 2.0 * math.pi * rnd(seed, serial, _S_Q1)
            a3 = 2.0 * math.pi * rnd(seed, serial, _S_Q2)
            s1 = ti.sqrt(1.0 - u1)
            s2 = ti.sqrt(u1)
            set4(
                rf,
                slot,
                Q,
                vec4(s2 * ti.cos(a3), s1 * ti.sin(a2), s1 * ti.cos(a2), s2 * ti.sin(a3)),
            )
            spin = ti.min(speed / r, 30.0) * 0.5
            set3(rf, slot, W, spin * gauss3(seed, serial, _S_W0, _S_W1, _S_W2, _S_W3))
            rf[slot, RAD] = r
            rf[slot, MU] = mat[m, MMU]
            rf[slot, REST] = mat[m, MREST]
            rf[slot, BIRTH] = birth
            ri[slot, ALIVE] = 1
            ri[slot, SLEEP] = 0
            ri[slot, CALM] = 0
            ri[slot, MAT] = m


@ti.kernel
def emit_dust(src: F2, srci: I2, n: i32, seed: ti.u32, serial0: ti.i64, birth: f64, df: F2):
    """New dust particles: serial = serial0 + DSTART + j goes to slot serial % capacity."""
    cap = df.shape[0]
    for s in range(n):
        for j in range(srci[s, DCOUNT]):
            serial = serial0 + srci[s, DSTART] + j
            slot = ti.cast(serial % cap, i32)
            side = ti.select(rnd(seed, serial, _S_SIDE) < 0.5, -1.0, 1.0)
            off, d = emit_offset(src, s, seed, serial, side)
            speed = 0.5 * src[s, SSPREAD] * (0.5 + rnd(seed, serial, _S_SPEED))
            set3(df, slot, DX, get3(src, s, SP) + off)
            set3(df, slot, DV, get3(src, s, SVEL) + speed * d)
            df[slot, DBIRTH] = birth
            df[slot, DLIFE] = src[s, SDLIFE] * (0.75 + 0.5 * rnd(seed, serial, _S_LIFE))
            df[slot, DR0] = src[s, SDR0] * (0.6 + 0.8 * rnd(seed, serial, _S_R0))
            df[slot, DGROW] = 3.0 + 2.0 * rnd(seed, serial, _S_GROW)
            df[slot, DA0] = 0.3 + 0.25 * rnd(seed, serial, _S_ALPHA)
            df[slot, DRISE] = src[s, SDRISE] * (0.5 + rnd(seed, serial, _S_RISE))


# ---- collider grid -----------------------------------------------------------------------------


@ti.func
def cell_hash(c, mask):
    """Bucket of integer cell c (Teschner et al. 2003 primes), masked to the table size."""
    h = (
        (ti.cast(c[0], ti.u32) * ti.u32(73856093))
        ^ (ti.cast(c[1], ti.u32) * ti.u32(19349663))
        ^ (ti.cast(c[2], ti.u32) * ti.u32(83492791))
    )
    return ti.cast(h & ti.cast(mask, ti.u32), i32)


@ti.func
def cell_of(x, cell):
    return ti.Vector([ti.floor(x[0] / cell), ti.floor(x[1] / cell), ti.floor(x[2] / cell)], dt=i32)


@ti.func
def piece_x(pp: ti.template(), p, a) -> vec3:
    return (1.0 - a) * get3(pp, p, PX0) + a * get3(pp, p, PX1)


@ti.func
def piece_q(pp: ti.template(), p, a) -> vec4:
    """Normalised linear blend of the start and end rotations (nlerp, shortest arc)."""
    q0 = get4(pp, p, PQ0)
    q1 = get4(pp, p, PQ1)
    if q0.dot(q1) < 0:
        q1 = -q1
    q = (1.0 - a) * q0 + a * q1
    return q / q.norm()


@ti.kernel
def hull_cells(hf: F2, hi: I2, nh: i32, pp: F2, margin: f64, cell: f64, ncell: I1, hs: F2):
    """Each hull's cell range over the step: its bounding sphere swept from the start to the end
    pose (chord plus the arc's sagitta), grown by ``margin`` (the largest rubble radius + slack),
    kept in ``hs: (H, 4)`` (centre [m] (3), radius [m]) for a cheap test before the planes.
    A hull that sweeps more than MAX_SWEEP cells in one step (a piece thrown at hundreds of m/s)
    is inserted at its end pose only, so one wild piece cannot blow up the grid."""
    for h in range(nh):
        p = hi[h, PIECE]
        c = get3(hf, h, HC)
        q0 = get4(pp, p, PQ0)
        q1 = get4(pp, p, PQ1)
        c0 = get3(pp, p, PX0) + quat_rotate(q0, c)
        c1 = get3(pp, p, PX1) + quat_rotate(q1, c)
        half = 0.5 * ti.acos(ti.min(ti.abs(q0.dot(q1)), 1.0))  # half the rotation angle
        rad = hf[h, HR] + 0.5 * (c1 - c0).norm() + c.norm() * (1.0 - ti.cos(half)) + margin
        mid = 0.5 * (c0 + c1)
        if rad > MAX_SWEEP * cell:
            rad = hf[h, HR] + margin
            mid = c1
        set3(hs, h, 0, mid)
        hs[h, 3] = rad
        lo = cell_of(mid - rad, cell)
        up = cell_of(mid + rad, cell)
        for k in ti.static(range(3)):
            hi[h, LO + k] = lo[k]
            hi[h, HI + k] = up[k]
        ncell[h] = (up[0] - lo[0] + 1) * (up[1] - lo[1] + 1) * (up[2] - lo[2] + 1)


@ti.kernel
def grid_count(hi: I2, nh: i32, mask: i32, count: I1):
    for h in range(nh):
        for i, j, k in ti.ndrange(
            (hi[h, LO], hi[h, HI] + 1),
            (hi[h, LO + 1], hi[h, HI + 1] + 1),
            (hi[h, LO + 2], hi[h, HI + 2] + 1),
        ):
            ti.atomic_add(count[cell_hash(ti.Vector([i, j, k]), mask)], 1)


@ti.kernel
def grid_prefix(count: I1, t: i32, start: I1):
    """Exclusive prefix sum: start[b] = entries before bucket b; start[t] = all entries."""
    acc = 0
    ti.loop_config(serialize=True)
    for b in range(t):
        start[b] = acc
        acc += count[b]
        count[b] = 0
    start[t] = acc


@ti.kernel
def grid_fill(hi: I2, nh: i32, mask: i32, start: I1, cursor: I1, cell_hull: I1):
    for h in range(nh):
        for i, j, k in ti.ndrange(
            (hi[h, LO], hi[h, HI] + 1),
            (hi[h, LO + 1], hi[h, HI + 1] + 1),
            (hi[h, LO + 2], hi[h, HI + 2] + 1),
        ):
            b = cell_hash(ti.Vector([i, j, k]), mask)
            cell_hull[start[b] + ti.atomic_add(cursor[b], 1)] = h


@ti.kernel
def grid_sort(t: i32, start: I1, cell_hull: I1):
    """Sort each bucket by hull index (insertion sort: buckets are short), so the order in which
    a rubble bit meets its hulls does not depend on which thread filled the bucket first."""
    for b in range(t):
        for i in range(start[b] + 1, start[b + 1]):
            v = cell_hull[i]
            j = i - 1
            while j >= start[b] and cell_hull[j] > v:
                cell_hull[j + 1] = cell_hull[j]
                j -= 1
            cell_hull[j + 1] = v


@ti.kernel
def rest_count(rf: F2, ri: I2, used: i32, mask: i32, cell: f64, count: I1) -> i32:
    """Count the sleeping bits per bucket of the resting-rubble grid; return how many sleep."""
    total = 0
    for i in range(used):
        if ri[i, ALIVE] == 1 and ri[i, SLEEP] == 1:
            ti.atomic_add(count[cell_hash(cell_of(get3(rf, i, X), cell), mask)], 1)
            total += 1
    return total


@ti.kernel
def rest_fill(rf: F2, ri: I2, used: i32, mask: i32, cell: f64, start: I1, cursor: I1, rest: I1):
    for i in range(used):
        if ri[i, ALIVE] == 1 and ri[i, SLEEP] == 1:
            b = cell_hash(cell_of(get3(rf, i, X), cell), mask)
            rest[start[b] + ti.atomic_add(cursor[b], 1)] = i


@ti.kernel
def rest_pack(rf: F2, rest: I1, n: i32, rest_x: F2):
    """Copy the sleeping bits' centres and radii (in grid order) out of the rubble table, so the
    step reads them from here while the bits themselves may wake and move."""
    for k in range(n):
        i = rest[k]
        set3(rest_x, k, 0, get3(rf, i, X))
        rest_x[k, 3] = rf[i, RAD]


# ---- rubble ------------------------------------------------------------------------------------


@ti.func
def hull_depth(hp: ti.template(), hi: ti.template(), h, xl):
    """Signed distance-like value of local point xl to hull h: the largest plane value (exact on
    faces, a lower bound of the distance near edges and corners), and that plane's row."""
    best = -1e30
    arg = hi[h, PLANE0]
    for k in range(hi[h, PLANE0], hi[h, PLANE0] + hi[h, NPLANE]):
        s = hp[k, 0] * xl[0] + hp[k, 1] * xl[1] + hp[k, 2] * xl[2] + hp[k, 3]
        if s > best:
            best = s
            arg = k
    return best, arg


@ti.func
def friction_correction(dx_t, depth, mu):
    """Coulomb friction on a position step: the tangential slip dx_t is cancelled up to mu times
    the normal correction (the same impulse ratio as mu, Mueller et al. 2020, section 3.5)."""
    slip = dx_t.norm()
    corr = dx_t
    if slip > mu * depth:
        corr = dx_t * (mu * depth / slip)
    return corr


@ti.func
def normal_velocity(v, v_prev, v_surf, n, e, v_bounce):
    """Velocity after a contact along n: the normal part becomes -e times the approach speed
    (zero below v_bounce, so resting contact does not jitter)."""
    vn = (v - v_surf).dot(n)
    vn_prev = (v_prev - v_surf).dot(n)
    target = 0.0
    if vn_prev < -v_bounce:
        target = -e * vn_prev
    return v + (target - vn) * n


@ti.func
def piece_contact(hp: ti.template(), hi: ti.template(), pp: ti.template(), hh, x, r, a, a_prev):
    """Rubble at x (radius r) against hull hh at the pose at fraction a of the step: the push
    out along the deepest plane's normal (depth 0 when apart), and how far the piece surface
    under x moved since fraction a_prev (from the same interpolated poses, so it is consistent)."""
    p = hi[hh, PIECE]
    c = piece_x(pp, p, a)
    q = piece_q(pp, p, a)
    xl = quat_rotate(quat_conj(q), x - c)
    s, kp = hull_depth(hp, hi, hh, xl)
    depth = ti.max(r - s, 0.0)
    n = vec3(0.0)
    moved = vec3(0.0)
    if depth > 0:
        n = quat_rotate(q, vec3(hp[kp, 0], hp[kp, 1], hp[kp, 2]))
        moved = (c + quat_rotate(q, xl)) - (
            piece_x(pp, p, a_prev) + quat_rotate(piece_q(pp, p, a_prev), xl)
        )
    return depth, n, moved


@ti.func
def near(hs: ti.template(), hh, x) -> i32:
    """1 when x is inside hull hh's swept bounding sphere (also drops hash-collision entries)."""
    return ti.select((x - get3(hs, hh, 0)).norm_sqr() < hs[hh, 3] * hs[hh, 3], 1, 0)


@ti.func
def rest_contact(
    rest_start: ti.template(),
    rest: ti.template(),
    rest_x: ti.template(),
    mask,
    cell,
    i,
    x,
    xp,
    r,
    mu,
    max_push,
    push: ti.template(),
):
    """A bit (slot i, centre x, radius r; xp at the start of the substep) against the resting
    bits: with ``push``, pushed out of each one it overlaps in turn by at most max_push [m],
    with Coulomb friction (they do not move). Returns the new centre, the last contact normal
    (zero: no contact) and the largest upward component of the contact normals (-1: none; > 0:
    something below holds the bit up). Two bits that crossed in flight can overlap deeply: the cap lets them
    part at POP_SPEED instead of in one violent jump. (Two that fall asleep in the same step
    inside each other stay so: waking them would not converge where one is wedged.)
    Cells are at least twice the largest contact distance, so the 2 x 2 x 2 cells nearest to x
    hold every bit it can touch."""
    n_last = vec3(0.0)
    up = -1.0
    lo = cell_of(x - 0.5 * cell, cell)
    for di, dj, dk in ti.static(ti.ndrange(2, 2, 2)):
        b = cell_hash(lo + ti.Vector([di, dj, dk]), mask)
        for e in range(rest_start[b], rest_start[b + 1]):
            if rest[e] != i:
                d = x - get3(rest_x, e, 0)
                dist = d.norm()
                depth = r + rest_x[e, 3] - dist
                if depth > 0:
                    n = vec3(0.0, 1.0, 0.0)
                    if dist > 1e-9:
                        n = d / dist
                    n_last = n
                    up = ti.max(up, n[1])
                    if ti.static(push):
                        depth = ti.min(depth, max_push)
                        x += depth * n
                        dx = x - xp
                        x -= friction_correction(dx - dx.dot(n) * n, depth, mu)
    return x, n_last, up


@ti.kernel
def rubble_step(
    rf: F2,
    ri: I2,
    dt: f64,
    substeps: i32,
    gx: f64,
    gy: f64,
    gz: f64,
    ground: i32,
    hp: F2,
    hi: I2,
    hs: F2,
    pp: F2,
    start: I1,
    cell_hull: I1,
    mask: i32,
    cell: f64,
    has_grid: i32,
    rest_start: I1,
    rest: I1,
    rest_x: F2,
    rest_mask: i32,
    rest_cell: f64,
    has_rest: i32,
    v_sleep: f64,
    calm_steps: i32,
    v_wake: f64,
    tol: f64,
    used: i32,
    check_sleepers: i32,
) -> i32:
    """One step of dt for every rubble bit, all substeps in one pass: within a step a moving bit
    meets only things whose path is known, so bits need no synchronisation: the hulls (poses
    interpolated from the step's start to its end), the ground, and the bits that were asleep
    at the start of the step (the resting-rubble grid: ``rest_x`` rows in ``rest_start``
    buckets, cells of ``rest_cell``), which stay put; so rubble lands on resting rubble and
    piles up, while two bits in flight pass through each other.

    1. A sleeping bit wakes when a hull at its end-of-step pose pushes into it or moves under it
       faster than v_wake, or when nothing (ground, hull, resting bit) supports it any more.
    2. Each substep: exact gravity, the resting bits, the hulls (pushed out along the deepest
       plane, Coulomb friction against the moving surface), then the ground (last, so it always
       holds): the harder the obstacle, the later it is met. Then the velocity from the
       positions, and restitution along each contact normal.
    3. Bits touching something and slower than v_sleep for calm_steps steps fall asleep.

    Only the first ``used`` slots are looked at (slots fill from 0). With ``check_sleepers`` 0
    (the host knows nothing moved: static hulls, no bit woke or slept in the last step, nothing
    emitted) step 1 is skipped. Returns how many bits woke or fell asleep.
    """
    g = vec3(gx, gy, gz)
    h = dt / substeps
    v_bounce = 2.0 * g.norm() * h
    changed = 0
    for i in range(used):
        if ri[i, ALIVE] == 1:
            r = rf[i, RAD]
            mu = rf[i, MU]
            e_rest = rf[i, REST]
            x = get3(rf, i, X)
            if ri[i, SLEEP] == 1 and check_sleepers == 1:
                supported = 0
                wake = 0
                if ground == 1 and x[1] - r < tol:
                    supported = 1
                if has_grid == 1:
                    cc = cell_of(x, cell)
                    b = cell_hash(cc, mask)
                    for e in range(start[b], start[b + 1]):
                        hh = cell_hull[e]
                        if near(hs, hh, x) == 1:
                            depth, n, moved = piece_contact(hp, hi, pp, hh, x, r + tol, 1.0, 0.0)
                            if depth > 0:
                                supported = 1
                                p = hi[hh, PIECE]
                                v_surf = get3(pp, p, PV) + get3(pp, p, PW).cross(
                                    x - get3(pp, p, PX1)
                                )
                                if depth > 2.0 * tol or v_surf.norm() > v_wake:
                                    wake = 1
                if has_rest == 1 and supported == 0:
                    _, _, up = rest_contact(
                        rest_start,
                        rest,
                        rest_x,
                        rest_mask,
                        rest_cell,
                        i,
                        x,
                        x,
                        r + tol,
                        0.0,
                        0.0,
                        False,
                    )
                    if up > 0:  # a resting bit below it (one beside or above holds nothing up)
                        supported = 1
                if wake == 1 or supported == 0:
                    ri[i, SLEEP] = 0
                    ri[i, CALM] = 0
                    changed += 1
            if ri[i, SLEEP] == 0:
                v = get3(rf, i, V)
                w = get3(rf, i, W)
                q = get4(rf, i, Q)
                touch = 0
                for k in range(substeps):
                    xp = x
                    vp = v
                    x = xp + h * vp + 0.5 * h * h * g
                    touch = 0
                    n_r = vec3(0.0)
                    if has_rest == 1:
                        x, n_r, _ = rest_contact(
                            rest_start,
                            rest,
                            rest_x,
                            rest_mask,
                            rest_cell,
                            i,
                            x,
                            xp,
                            r,
                            mu,
                            POP_SPEED * h,
                            True,
                        )
                        if n_r.norm() > 0:
                            touch = 1
                    n_p = vec3(0.0)
                    v_p = vec3(0.0)
                    if has_grid == 1:
                        cc = cell_of(x, cell)
                        b = cell_hash(cc, mask)
                        for e in range(start[b], start[b + 1]):
                            hh = cell_hull[e]
                            if near(hs, hh, x) == 1:
                                a = (k + 1.0) / substeps
                                depth, n, moved = piece_contact(
                                    hp, hi, pp, hh, x, r, a, k * 1.0 / substeps
                                )
                                if depth > 0:
                                    x += depth * n
                                    dx = (x - xp) - moved
                                    x -= friction_correction(dx - dx.dot(n) * n, depth, mu)
                                    touch = 1
                                    n_p = n
                                    v_p = moved / h
                    gn = 0
                    if ground == 1 and x[1] < r:
                        depth = r - x[1]
                        x[1] = r
                        x -= friction_correction(vec3(x[0] - xp[0], 0.0, x[2] - xp[2]), depth, mu)
                        touch = 1
                        gn = 1
                    v = (x - xp) / h + 0.5 * h * g  # + g h / 2: the half step of exact gravity
                    vfree = vp + h * g
                    if touch == 1:
                        n_c = vec3(0.0, 1.0, 0.0)
                        v_c = vec3(0.0)
                        if n_p.norm() > 0:
                            v = normal_velocity(v, vfree, v_p, n_p, e_rest, v_bounce)
                            n_c = n_p
                            v_c = v_p
                        if n_r.norm() > 0:
                            v = normal_velocity(v, vfree, vec3(0.0), n_r, e_rest, v_bounce)
                            n_c = n_r
                            v_c = vec3(0.0)
                        if gn == 1:
                            v = normal_velocity(
                                v, vfree, vec3(0.0), vec3(0.0, 1.0, 0.0), e_rest, v_bounce
                            )
                            n_c = vec3(0.0, 1.0, 0.0)
                            v_c = vec3(0.0)
                        # a bit in contact turns as it rolls on the surface (for the look of it)
                        vt = (v - v_c) - (v - v_c).dot(n_c) * n_c
                        w = n_c.cross(vt) / r
                    q = quat_add_rotation(q, h * w)
                set3(rf, i, X, x)
                set3(rf, i, V, v)
                set3(rf, i, W, w)
                set4(rf, i, Q, q)
                if touch == 1 and v.norm() < v_sleep:
                    ri[i, CALM] += 1
                else:
                    ri[i, CALM] = 0
                if ri[i, CALM] >= calm_steps:
                    ri[i, SLEEP] = 1
                    set3(rf, i, V, vec3(0.0))
                    set3(rf, i, W, vec3(0.0))
                    changed += 1
    return changed


# ---- dust --------------------------------------------------------------------------------------


@ti.func
def curl_noise(modes: ti.template(), per, x, t) -> vec3:
    """Curl of the vector potential psi_c = sum amp sin(k.x + omega t + phase), with modes
    [c * per, (c + 1) * per) for component c: divergence-free by construction (Bridson et al.,
    "Curl-noise for procedural fluid flow", SIGGRAPH 2007)."""
    grad = ti.Matrix.zero(f64, 3, 3)  # grad[c, d] = d psi_c / d x_d
    for c in ti.static(range(3)):
        for j in range(c * per, (c + 1) * per):
            k = vec3(modes[j, MK], modes[j, MK + 1], modes[j, MK + 2])
            cs = modes[j, MAMP] * ti.cos(k.dot(x) + modes[j, MOMEGA] * t + modes[j, MPHASE])
            for d in ti.static(range(3)):
                grad[c, d] += cs * k[d]
    return vec3(grad[2, 1] - grad[1, 2], grad[0, 2] - grad[2, 0], grad[1, 0] - grad[0, 1])


@ti.kernel
def dust_step(
    df: F2, dt: f64, t1: f64, modes: F2, per: i32, tau_drag: f64, tau_rise: f64, ground: i32, n: i32
):
    """Advance live dust from t1 - dt to t1: the air velocity is curl noise plus a rise that decays
    with age; the particle velocity relaxes to it exactly (exponential drag), then moves."""
    decay = ti.exp(-dt / tau_drag)
    for i in range(n):
        life = df[i, DLIFE]
        if life > 0:
            age = t1 - df[i, DBIRTH]
            if age >= life:
                df[i, DLIFE] = 0.0
            elif age > 0:
                h = ti.min(dt, age)  # born during this step: move only since birth
                x = get3(df, i, DX)
                u = curl_noise(modes, per, x, t1) + vec3(
                    0.0, df[i, DRISE] * ti.exp(-age / tau_rise), 0.0
                )
                v0 = get3(df, i, DV)
                dec = decay
                if h < dt:
                    dec = ti.exp(-h / tau_drag)
                v1 = u + (v0 - u) * dec
                # exact position of the exponential relaxation over h
                x = x + u * h + (v0 - u) * tau_drag * (1.0 - dec)
                if ground == 1:
                    x[1] = ti.max(x[1], 0.0)
                set3(df, i, DX, x)
                set3(df, i, DV, v1)


@ti.kernel
def copy_rows_f(src: F2, n: i32, dst: F2):
    """dst[:n] = src[:n] (the used part of a table, so a snapshot does not copy the whole cap)."""
    for i, c in ti.ndrange(n, src.shape[1]):
        dst[i, c] = src[i, c]


@ti.kernel
def copy_rows_i(src: I2, n: i32, dst: I2):
    for i, c in ti.ndrange(n, src.shape[1]):
        dst[i, c] = src[i, c]


@ti.kernel
def dust_live(df: F2, t: f64, n: i32) -> i32:
    """Live dust among the first n slots."""
    live = 0
    for i in range(n):
        if df[i, DLIFE] > 0 and t - df[i, DBIRTH] < df[i, DLIFE]:
            live += 1
    return live

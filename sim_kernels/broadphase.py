"""Broadphase: a hashed uniform grid built with a counting (prefix-sum) sort, O(n) in shapes.

Shape tables (a body owns one or more convex hulls, its "shapes"):
``sf: (S, 4) f64``  centre of the bounding sphere in the body frame [m] (3), radius [m].
``si: (S, 5) i32``  body, first / end vertex row, first / end face-plane row.
``sb: (S, 4) f64``  (scratch) world centre and radius grown by the motion of one step [m].

The grid's cell is the largest grown diameter, so overlapping spheres sit in neighbouring
cells. Counting and both prefix sums are serial loops and the scatter keeps shape order, so
the pair list comes out in the same order on every run (determinism, DESIGN.md section 6).
Pairs: ``pairs: (P, 4) i32`` shape A, shape B (-1 = ground), contact count (narrowphase), spare.
"""

from sim_kernels.backend import F2, I1, I2, f64, get3, get4, quat_rotate, set3, ti, vec3
from sim_kernels.bodies import FIXED, FLAGS, RAD, SLEEP, Q, V, W, X

SB_R = 3


@ti.func
def _static(bi: ti.template(), b) -> ti.i32:
    """Fixed or asleep: neither moves nor needs contacts against another static body."""
    r = 1
    if b >= 0:
        r = 0
        if bi[b, FLAGS] == FIXED or bi[b, SLEEP] != 0:
            r = 1
    return r


@ti.func
def _cell(p, inv_cell) -> ti.types.vector(3, ti.i32):
    return ti.cast(ti.floor(p * inv_cell), ti.i32)


@ti.func
def _hash(c, mask) -> ti.i32:
    return ((c[0] * 73856093) ^ (c[1] * 19349663) ^ (c[2] * 83492791)) & mask


@ti.kernel
def build_grid(
    bf: F2,
    bi: I2,
    sf: F2,
    si: I2,
    dt: f64,
    margin: f64,
    sb: F2,
    aux: F2,
    gstart: I1,
    gfill: I1,
    gitems: I1,
    shash: I1,
):
    """Grow shape spheres by one step of motion, then counting-sort shapes into hash buckets.

    aux[0, 0] receives the cell size [m]. gstart: (T + 1,) bucket starts, gitems: (S,) shapes.
    """
    ns = si.shape[0]
    nt = gfill.shape[0]
    for s in range(ns):
        b = si[s, 0]
        q = get4(bf, b, Q)
        c = get3(bf, b, X) + quat_rotate(q, vec3(sf[s, 0], sf[s, 1], sf[s, 2]))
        speed = get3(bf, b, V).norm() + get3(bf, b, W).norm() * bf[b, RAD]
        set3(sb, s, 0, c)
        sb[s, SB_R] = sf[s, 3] + margin + speed * dt
    aux[0, 0] = 0.0
    for s in range(ns):
        ti.atomic_max(aux[0, 0], 2.0 * sb[s, SB_R])
    for t in range(nt):
        gfill[t] = 0
    for s in range(ns):
        h = _hash(_cell(get3(sb, s, 0), 1.0 / aux[0, 0]), nt - 1)
        shash[s] = h
        ti.atomic_add(gfill[h], 1)  # integer counts: order independent
    ti.loop_config(serialize=True)
    for t in range(nt + 1):
        if t == 0:
            gstart[0] = 0
        else:
            gstart[t] = gstart[t - 1] + gfill[t - 1]
    ti.loop_config(serialize=True)
    for s in range(ns):
        h = shash[s]
        gitems[gstart[h + 1] - gfill[h]] = s
        gfill[h] -= 1
    # gfill[h] counted down to 0; within a bucket shapes sit in increasing order


@ti.func
def _visit_pairs(
    s,
    bi: ti.template(),
    si: ti.template(),
    sb: ti.template(),
    gstart: ti.template(),
    gitems: ti.template(),
    cell_size,
    ground,
    pairs: ti.template(),
    base,
    write: ti.template(),
) -> ti.i32:
    """Count (write=0) or store (write=1, from row base) the candidate pairs of shape s."""
    n = 0
    nt = gstart.shape[0] - 1
    b = si[s, 0]
    cs = get3(sb, s, 0)
    rs = sb[s, SB_R]
    if ground != 0 and _static(bi, b) == 0 and bi[b, FLAGS] != 2 and cs[1] - rs < 0.0:
        if ti.static(write):
            pairs[base + n, 0] = s
            pairs[base + n, 1] = -1
            pairs[base + n, 2] = 0
        n += 1
    c0 = _cell(cs, 1.0 / cell_size)
    seen = ti.Vector([-1] * 27, dt=ti.i32)
    k = 0
    for dx, dy, dz in ti.ndrange((-1, 2), (-1, 2), (-1, 2)):
        h = _hash(c0 + ti.Vector([dx, dy, dz], dt=ti.i32), nt - 1)
        dup = 0
        for m in range(27):
            if m < k and seen[m] == h:
                dup = 1
        seen[k] = h
        k += 1  # noqa: SIM113 - a Taichi ndrange has no enumerate
        if dup == 0:
            for e in range(gstart[h], gstart[h + 1]):
                o = gitems[e]
                bo = si[o, 0]
                if o > s and bo != b and (_static(bi, b) == 0 or _static(bi, bo) == 0):  # noqa: SIM102
                    if (get3(sb, o, 0) - cs).norm() < rs + sb[o, SB_R]:
                        if ti.static(write):
                            pairs[base + n, 0] = s
                            pairs[base + n, 1] = o
                            pairs[base + n, 2] = 0
                        n += 1
    return n


@ti.kernel
def count_pairs(
    bi: I2,
    si: I2,
    sb: F2,
    gstart: I1,
    gitems: I1,
    aux: F2,
    ground: ti.i32,
    pairs: I2,
    pstart: I1,
):
    """pstart: (S + 1,) exclusive prefix sum of each shape's pair count; pstart[S] = total."""
    ns = si.shape[0]
    for s in range(ns):
        pstart[s + 1] = _visit_pairs(s, bi, si, sb, gstart, gitems, aux[0, 0], ground, pairs, 0, 0)
    ti.loop_config(serialize=True)
    for s in range(ns + 1):
        if s == 0:
            pstart[0] = 0
        else:
            pstart[s] += pstart[s - 1]


@ti.kernel
def write_pairs(
    bi: I2,
    si: I2,
    sb: F2,
    gstart: I1,
    gitems: I1,
    aux: F2,
    ground: ti.i32,
    pstart: I1,
    pairs: I2,
):
    for s in range(si.shape[0]):
        _visit_pairs(s, bi, si, sb, gstart, gitems, aux[0, 0], ground, pairs, pstart[s], 1)

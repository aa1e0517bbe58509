"""The substep: predict, solve positions, update velocities, solve velocities (XPBD).

Constraints ("units") are the contact pairs with points plus the intact bonds, listed every
substep by :func:`build_units` (``units: (U, 2) i32``: kind CONTACT / BOND, row in its table).
They are solved Gauss-Seidel in that fixed order (reversed on alternate sweeps), a few sweeps
per substep (Mueller et al. 2020 use many substeps and one sweep; rigid glue in long chains
needs more). A serial loop inside one kernel launch: deterministic (no float atomics), no
per-constraint or per-colour launches (each costs ~0.1-0.4 ms here); the per-body phases run
in parallel. A graph colouring would parallelise the sweep on a GPU; on this 2-core CPU the
serial sweep is the simpler choice. A contact pair whose bodies share an intact bond (or that
overlapped at the start, see World.exclude_overlaps) is left out.
"""

from sim_kernels.backend import F2, I1, I2, f64, get3, ti, vec3
from sim_kernels.bodies import (
    CALM,
    FLAGS,
    IMPACT,
    RAD,
    SLEEP,
    WAKE,
    V,
    W,
    X,
    apply_pair,
    integrate_body,
    movable,
    update_body_velocity,
    w_pair,
)
from sim_kernels.bonds import (
    APOS,
    AROT,
    BROKEN,
    FACC,
    LPOS,
    LROT,
    TACC,
    bond_position_row,
    bond_velocity_row,
)
from sim_kernels.contacts import (
    LAM,
    MAXC,
    PN_LAM,
    PN_LEFT,
    RA,
    RB,
    _attach,
    _mu,
    _pair_bodies,
    contact_position_row,
    contact_velocity_row,
)

CONTACT, BOND = 0, 1


@ti.func
def _dynamic(bi: ti.template(), b) -> ti.i32:
    r = 0
    if b >= 0:  # noqa: SIM102 - Taichi's `and` does not short-circuit: guard the index
        if bi[b, FLAGS] == 0 and bi[b, SLEEP] == 0:
            r = 1
    return r


@ti.kernel
def build_units(
    bi: I2,
    si: I2,
    npairs: ti.i32,
    pairs: I2,
    bdi: I2,
    bond_start: I1,
    bond_list: I1,
    excl_start: I1,
    excl_list: I1,
    units: I2,
    count: I1,
):
    """List this step's constraints in a fixed order; count[0] receives their number.

    Contact pairs of glued bodies (intact bond) and of excluded body pairs are left out.
    """
    ti.loop_config(serialize=True)
    for p in range(npairs + 1):
        if p == 0:
            count[0] = 0
        if p > 0 and pairs[p - 1, 2] > 0:
            a, b = _pair_bodies(si, pairs, p - 1)
            glued = 0
            for e in range(bond_start[a], bond_start[a + 1]):
                k = bond_list[e]
                if bdi[k, BROKEN] == 0 and (bdi[k, 0] == b or bdi[k, 1] == b):
                    glued = 1
            for e in range(excl_start[a], excl_start[a + 1]):
                if excl_list[e] == b:
                    glued = 1
            if glued == 0:
                units[count[0], 0] = CONTACT
                units[count[0], 1] = p - 1
                count[0] += 1
    ti.loop_config(serialize=True)
    for k in range(bdi.shape[0]):
        if bdi[k, BROKEN] == 0 and (_dynamic(bi, bdi[k, 0]) + _dynamic(bi, bdi[k, 1])) > 0:
            units[count[0], 0] = BOND
            units[count[0], 1] = k
            count[0] += 1


@ti.func
def _unit(
    bi: ti.template(),
    si: ti.template(),
    pairs: ti.template(),
    bdi: ti.template(),
    u,
    units: ti.template(),
):
    """Bodies of unit u, and 1 when it has work to do (some body movable, bond intact)."""
    idx = units[u, 1]
    a = 0
    b = -1
    if units[u, 0] == CONTACT:
        a, b = _pair_bodies(si, pairs, idx)
    else:
        a = bdi[idx, 0]
        b = bdi[idx, 1]
    live = 0
    if movable(bi, a) + movable(bi, b) > 0:
        live = 1
        if units[u, 0] == BOND and bdi[idx, BROKEN] != 0:
            live = 0
    return a, b, live


@ti.func
def _contact_row(r, npoints, flip):
    """Row r of a contact pair -> (point, friction): point -1 is the centroid.

    Rows: centroid normal, corner normals, centroid friction, corner frictions; friction last,
    so the slip it removes is not brought back by a later normal row. Corners are visited in
    reverse on alternate substeps: a fixed Gauss-Seidel order tilts a resting box the same way
    every substep.
    """
    fric = 0
    k = r - 1
    if r > npoints:
        fric = 1
        k = r - npoints - 2
    if flip != 0 and k >= 0:
        k = npoints - 1 - k
    return k, fric


@ti.func
def _supporting(pairs: ti.template(), pn: ti.template(), p, g) -> ti.i32:
    """1 for a face contact (3+ points) that carries weight: its normal within 45 degrees of
    gravity. Its centroid rows then push the bodies without turning them (the block solution
    of a resting face, which Gauss-Seidel over the corners alone approaches by walking the body
    sideways); side contacts keep the full coupling, which is what stays stable there.
    """
    r = 0
    gn = g.norm()
    if pairs[p, 2] >= 3 and gn > 0.0 and ti.abs(get3(pn, p, 0).dot(g)) > 0.7071 * gn:
        r = 1
    return r


@ti.func
def _over(
    bf: ti.template(),
    bi: ti.template(),
    si: ti.template(),
    pairs: ti.template(),
    pn: ti.template(),
    cf: ti.template(),
    p,
) -> ti.i32:
    """1 when the centre of mass of each movable body of contact pair p lies over the
    manifold (seen along the normal, within 10 % of the body's radius): only then may the
    centroid's normal row push without turning. A slab resting on a beam by an edge strip
    must tip; held up at its centre of mass it would float.
    """
    a, b = _pair_bodies(si, pairs, p)
    nc = pairs[p, 2]
    n = get3(pn, p, 0)
    r = 1
    for side in range(2):
        i = a
        col = RA
        if side == 1:
            i = b
            col = RB
        if movable(bi, i) != 0:
            mid = vec3(0.0)
            for j in range(nc):
                _, q = _attach(bf, i, get3(cf, p * MAXC + j, col), 0)
                mid += q / nc
            d = get3(bf, i, X) - mid
            d -= d.dot(n) * n
            ln = d.norm()
            tol = 0.1 * bf[i, RAD]
            if ln > tol:
                u = d / ln
                reach = -1e30
                for j in range(nc):
                    _, q = _attach(bf, i, get3(cf, p * MAXC + j, col), 0)
                    reach = ti.max(reach, u.dot(q - mid))
                if reach < ln - tol:
                    r = 0
    return r


@ti.kernel
def substep(
    bf: F2,
    bi: I2,
    si: I2,
    pairs: I2,
    pn: F2,
    cf: F2,
    bdf: F2,
    bdi: I2,
    units: I2,
    nunits: ti.i32,
    h: f64,
    gx: f64,
    gy: f64,
    gz: f64,
    ground_mu: f64,
    first: ti.i32,
    flip: ti.i32,
    iterations: ti.i32,
):
    """One XPBD substep over all bodies and constraints (Mueller et al. 2020, algorithm 2).

    The position pass runs `iterations` Gauss-Seidel sweeps (multipliers accumulate over them).
    """
    g = vec3(gx, gy, gz)
    for i in range(bf.shape[0]):
        integrate_body(bf, bi, i, h, g, first)
    ti.loop_config(serialize=True)
    for it_uu in range(iterations * nunits):
        it = it_uu // nunits
        uu = it_uu % nunits
        u = uu
        if (flip + it) % 2 != 0:
            u = nunits - 1 - uu  # alternate sweeps: symmetric Gauss-Seidel down a stack
        a, b, live = _unit(bi, si, pairs, bdi, u, units)
        kind = units[u, 0]
        idx = units[u, 1]
        nrows = 2
        if kind == BOND and it == 0:
            bdf[idx, LPOS] = 0.0
            bdf[idx, LROT] = 0.0
        if kind == CONTACT:
            nrows = 2 + 2 * pairs[idx, 2]
            if it == 0:
                pn[idx, PN_LAM] = 0.0
                pn[idx, PN_LEFT] = 0.0
                for k in range(pairs[idx, 2]):
                    cf[idx * MAXC + k, LAM] = 0.0
        if live == 0:
            nrows = 0
        for r in range(nrows):
            valid = 0
            dirn = vec3(0.0)
            ra = vec3(0.0)
            rb = vec3(0.0)
            c = 0.0
            limit = 1e30
            angular = 0
            k = -1
            fric = 0
            if kind == CONTACT:
                k, fric = _contact_row(r, pairs[idx, 2], flip)
                valid, dirn, ra, rb, c, limit = contact_position_row(
                    bf, bi, si, pairs, pn, cf, idx, k, fric, ground_mu, h
                )
                if k < 0 and _supporting(pairs, pn, idx, g) != 0:  # noqa: SIM102 - no short circuit
                    if fric != 0 or _over(bf, bi, si, pairs, pn, cf, idx) != 0:
                        angular = 2  # a face contact's centroid rows move it, the corners turn
            else:
                valid, dirn, ra, rb, c, angular = bond_position_row(bf, bdf, bdi, idx, r)
            if valid != 0:
                wsum = w_pair(bf, bi, a, b, ra, rb, dirn, angular)
                lam = c / wsum
                if kind == BOND:  # XPBD with compliance: d lam = (C - a~ lam_sum) / (w + a~)
                    col_l = LPOS
                    col_a = APOS
                    if angular != 0:
                        col_l = LROT
                        col_a = AROT
                    at = bdf[idx, col_a] / (h * h)
                    lam = (c - at * bdf[idx, col_l]) / (wsum + at)
                    bdf[idx, col_l] += lam
                if lam <= limit:
                    apply_pair(bf, bi, a, b, ra, rb, lam * dirn, angular, 0)
                    if kind == CONTACT:
                        if k < 0 and fric == 0:  # the centroid's load is shared by the points
                            pn[idx, PN_LAM] += lam
                            pn[idx, PN_LEFT] += _mu(bf, a, b, ground_mu) * lam
                            for j in range(pairs[idx, 2]):
                                cf[idx * MAXC + j, LAM] += lam / pairs[idx, 2]
                        elif k < 0:
                            pn[idx, PN_LEFT] -= lam
                        elif fric == 0:
                            cf[idx * MAXC + k, LAM] += lam
                    else:
                        col = FACC
                        if angular != 0:
                            col = TACC
                        for m in ti.static(range(3)):
                            bdf[idx, col + m] += lam / (h * h) * dirn[m]
    for i in range(bf.shape[0]):
        update_body_velocity(bf, bi, i, h)
    ti.loop_config(serialize=True)
    for uu in range(nunits):
        u = uu
        if flip != 0:
            u = nunits - 1 - uu  # alternate sweeps: symmetric Gauss-Seidel down a stack
        a, b, live = _unit(bi, si, pairs, bdi, u, units)
        kind = units[u, 0]
        idx = units[u, 1]
        nrows = 2
        if kind == CONTACT:
            nrows = 2 + 2 * pairs[idx, 2]
        if live == 0:
            nrows = 0
        for r in range(nrows):
            valid = 0
            imp = vec3(0.0)
            ra = vec3(0.0)
            rb = vec3(0.0)
            angular = 0
            energy = 0.0
            if kind == CONTACT:
                k, fric = _contact_row(r, pairs[idx, 2], flip)
                valid, imp, ra, rb, energy = contact_velocity_row(
                    bf,
                    bi,
                    si,
                    pairs,
                    pn,
                    cf,
                    idx,
                    k,
                    fric,
                    h,
                    g / ti.max(g.norm(), 1e-30),
                    g.norm(),
                    ground_mu,
                )
                if k < 0 and fric != 0 and _supporting(pairs, pn, idx, g) != 0:
                    angular = 2
            else:
                valid, imp, ra, rb, angular = bond_velocity_row(bf, bi, bdf, bdi, idx, r, h)
            if valid != 0:
                apply_pair(bf, bi, a, b, ra, rb, imp, angular, 1)
                if kind == CONTACT:
                    if energy > 0.0:
                        bf[a, IMPACT] = ti.max(bf[a, IMPACT], energy)
                        if b >= 0:
                            bf[b, IMPACT] = ti.max(bf[b, IMPACT], energy)
                else:
                    col = FACC
                    if angular != 0:
                        col = TACC
                    for m in ti.static(range(3)):
                        bdf[idx, col + m] += imp[m] / h


@ti.kernel
def wake_touched(
    bf: F2, bi: I2, si: I2, pairs: I2, bdi: I2, units: I2, nunits: ti.i32, v_wake: f64
):
    """Wake sleeping bodies touched (contact or bond) by a body that moves faster than v_wake,
    took an impact this step (IMPACT > 0), or was itself woken by an impact last step (CALM < 0):
    an impact on a sleeping pile wakes two layers, not only the body it hit.
    """
    for u in range(nunits):
        a = 0
        b = -1
        if units[u, 0] == 0:
            a, b = _pair_bodies(si, pairs, units[u, 1])
        else:
            a = bdi[units[u, 1], 0]
            b = bdi[units[u, 1], 1]
        if b >= 0:
            for side in range(2):
                me = a
                other = b
                if side == 1:
                    me = b
                    other = a
                if bi[me, SLEEP] == 0 and bi[me, FLAGS] != 1 and bi[other, SLEEP] != 0:
                    s = get3(bf, me, V).norm() + get3(bf, me, W).norm() * bf[me, RAD]
                    if bf[me, IMPACT] > 0.0:
                        ti.atomic_max(bi[other, WAKE], 2)
                    elif s > v_wake or bi[me, CALM] < 0:
                        ti.atomic_max(bi[other, WAKE], 1)

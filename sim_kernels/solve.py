"""The substep: predict, solve positions, update velocities, solve velocities (XPBD).

Constraints ("units") are the contact pairs with points plus the intact bonds, listed every
substep by :func:`build_units` (``units: (U, 3) i32``: kind CONTACT / BOND, row in its table,
sort key). They are solved Gauss-Seidel, a few sweeps per substep (Mueller et al. 2020 use many substeps
and one sweep; rigid glue in long chains needs more), each sweep a kernel launch
(:func:`position_sweep`), then :func:`velocity_sweep`. A contact pair whose bodies share
an intact bond (or that overlapped at the start, see World.exclude_overlaps) is left out.

A sweep runs groups of units that share no movable body in parallel (see NSLABS): no float
atomics and a decomposition fixed by the scene, not the thread count, so a result is
bit-identical on any number of CPU threads. Within a group the units run in a fixed order,
bottom to top (reversed on alternate sweeps). A graph colouring would give a GPU more
parallel work than the groups do. Contacts between two moving bodies count the upper one
lighter (mass scaling, see MASS_SCALE_PER_M), so a stack carries a heavy load in a few sweeps.
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
#: Contact mass scaling per metre of height (see _mass_scales). Gauss-Seidel passes a heavy
#: load down a stack of light pieces too slowly: a falling floor sank into the crushed column
#: under it. Worst penetration of six runs of the benchmarks/bench_sim_vs_pybullet collapse at
#: 500 / 1000 / 2000 / 4000 pieces: 3.45 / 2.21 / 1.68 / 10.9 cm without the scaling, 1.82 /
#: 0.86 / 0.70 / 0.75 cm with it (medians 1.3 / 1.7 / 1.2 / 6.1 and 1.0 / 0.5 / 0.35 / 0.5
#: cm); the pile's mean height stays within 3.5 % of PyBullet's. k = 0.75 gave no less
#: penetration and a pile 4-6 % lower than PyBullet's.
MASS_SCALE_PER_M = 0.5
KEY = 2  # column of units holding the sort key of build_units (see _key)

#: The groups: NSLABS slabs across the awake bodies, then the boundaries between neighbouring
#: slabs (even-odd, then odd-even: each phase's groups share no slab), then the rest (units of
#: bodies in slabs further apart). Groups 0..NSLABS-1 are the slabs, NSLABS + s the boundary of
#: slabs s and s + 1, NGROUPS - 1 the rest. 8 slabs keep 2-8 CPU threads busy.
NSLABS = 8
NGROUPS = 2 * NSLABS
NHEIGHTS = 32  # layers of height each group's units are sorted by (see _key)
NKEYS = NGROUPS * NHEIGHTS
#: Taichi 1.7's CPU backend gives each parallel task at least 512 iterations of a range-for
#: (its adaptive block size; loop_config(block_dim=...) does not lower it), so a loop over 8
#: groups would run on one thread: the group loops step SPREAD iterations per group.
SPREAD = 512
#: (first group, stride, count) of each phase, run in this order
PHASES = (
    (0, 1, NSLABS),
    (NSLABS, 2, NSLABS // 2),
    (NSLABS + 1, 2, NSLABS // 2 - 1),
    (NGROUPS - 1, 1, 1),
)


@ti.kernel
def build_units(
    bf: F2,
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
    ustart: I1,
    ulist: I1,
):
    """List this step's constraints in a fixed order; count[0] receives their number.

    Contact pairs of glued bodies (intact bond) and of excluded body pairs are left out.
    Then sort them by group and height (ustart: NKEYS + 1 offsets into ulist; see _key),
    keeping the list's order within each key.
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
        if bdi[k, BROKEN] == 0 and (movable(bi, bdi[k, 0]) + movable(bi, bdi[k, 1])) > 0:
            units[count[0], 0] = BOND
            units[count[0], 1] = k
            count[0] += 1
    ti.loop_config(serialize=True)
    for _ in range(1):  # one serial block: loops at kernel scope would run in parallel
        lo, width, axis, ylo, yw = _slabs(bf, bi)
        for key in range(NKEYS + 1):
            ustart[key] = 0
        for u in range(count[0]):
            units[u, KEY] = _key(bf, bi, si, pairs, bdi, units, u, lo, width, axis, ylo, yw)
            ustart[units[u, KEY] + 1] += 1
        for key in range(NKEYS):
            ustart[key + 1] += ustart[key]
        for u in range(count[0]):  # counting sort, stable: ulist[ustart[k]:ustart[k + 1]]
            key = units[u, KEY]
            ulist[ustart[key]] = u
            ustart[key] += 1
        for key in range(NKEYS):
            ustart[NKEYS - key] = ustart[NKEYS - key - 1]
        ustart[0] = 0


@ti.func
def _slabs(bf: ti.template(), bi: ti.template()):
    """NSLABS equal slabs across the awake bodies' centres, along x or z (the wider), and
    NHEIGHTS equal layers of their heights: (slab start, width, axis, layer start, height)."""
    lo = vec3(1e30)
    hi = vec3(-1e30)
    for i in range(bf.shape[0]):
        if movable(bi, i) != 0:
            x = get3(bf, i, X)
            lo = ti.min(lo, x)
            hi = ti.max(hi, x)
    axis = 0
    if hi[2] - lo[2] > hi[0] - lo[0]:
        axis = 2
    width = ti.max((hi[axis] - lo[axis]) / NSLABS, 1e-9)
    return lo[axis], width, axis, lo[1], ti.max((hi[1] - lo[1]) / NHEIGHTS, 1e-9)


@ti.func
def _key(
    bf: ti.template(),
    bi: ti.template(),
    si: ti.template(),
    pairs: ti.template(),
    bdi: ti.template(),
    units: ti.template(),
    u,
    lo,
    width,
    axis,
    ylo,
    yw,
) -> ti.i32:
    """Sort key of unit u: group * NHEIGHTS + layer.

    Group: the slab of its movable bodies, the boundary between two neighbouring slabs, or the
    last group (bodies in slabs further apart); units of different groups in one phase
    (PHASES) share no movable body. Layer: the height of its movable bodies' centres, so a
    sweep walks a stack bottom to top (and back on alternate sweeps): a load carried down a
    column of pieces is passed on in one sweep, not one link per sweep.
    """
    a, b, _ = _unit(bi, si, pairs, bdi, u, units)
    s = ti.Vector([-1, -1])
    y = 0.0
    nm = 0
    for side in ti.static(range(2)):
        i = a
        if side == 1:
            i = b
        if movable(bi, i) != 0:
            s[side] = ti.min(ti.max(ti.i32((bf[i, X + axis] - lo) / width), 0), NSLABS - 1)
            y += bf[i, X + 1]
            nm += 1
    if s[0] < 0:
        s[0] = s[1]
    if s[1] < 0:
        s[1] = s[0]
    grp = NGROUPS - 1
    lo_s = ti.min(s[0], s[1])
    d = ti.abs(s[0] - s[1])
    if lo_s < 0:
        grp = 0  # nothing to move: any group
    elif d == 0:
        grp = lo_s
    elif d == 1:
        grp = NSLABS + lo_s
    layer = 0
    if nm > 0:
        layer = ti.min(ti.max(ti.i32((y / nm - ylo) / yw), 0), NHEIGHTS - 1)
    return grp * NHEIGHTS + layer


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


@ti.func
def _mass_scales(bf: ti.template(), bi: ti.template(), kind, fric, a, b):
    """Inverse-mass scales of a contact's two bodies in the position pass: exp(k (y - y_mid))
    with k = MASS_SCALE_PER_M, so the upper body counts lighter and the lower heavier (Macklin
    et al. 2014, "Unified particle physics for real-time applications", section 5.2: mass
    scaling for stacks). Only the normal rows are scaled: a scaled correction does not
    conserve momentum, which the stack needs only along its normals. (1, 1) for bonds and
    against a body that does not move (the ground, a fixed or sleeping one), where a scale
    would change nothing."""
    sa = 1.0
    sb = 1.0
    if kind == CONTACT and fric == 0 and b >= 0 and movable(bi, a) + movable(bi, b) == 2:
        ya = bf[a, X + 1]
        yb = bf[b, X + 1]
        ym = 0.5 * (ya + yb)
        sa = ti.exp(MASS_SCALE_PER_M * (ya - ym))
        sb = ti.exp(MASS_SCALE_PER_M * (yb - ym))
    return sa, sb


@ti.func
def _position_unit(
    bf: ti.template(),
    bi: ti.template(),
    si: ti.template(),
    pairs: ti.template(),
    pn: ti.template(),
    cf: ti.template(),
    bdf: ti.template(),
    bdi: ti.template(),
    units: ti.template(),
    u,
    it,
    h,
    g,
    ground_mu,
    flip,
):
    """Sweep ``it`` of the position pass over unit u's rows (multipliers reset on sweep 0)."""
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
            sa, sb = _mass_scales(bf, bi, kind, fric, a, b)
            wsum = w_pair(bf, bi, a, b, ra, rb, dirn, angular, sa, sb)
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
            # what the friction budgets and the velocity pass read: with scaled masses, the
            # impulse the lighter-counted upper body feels, which at rest is the weight it puts
            # on the contact (lam alone made friction on a moving slab 12 % weak, and c over the
            # unscaled inverse mass 4 % strong); lam itself where nothing is scaled
            load = lam * ti.max(sa, sb)
            if load <= limit:
                apply_pair(bf, bi, a, b, ra, rb, lam * dirn, angular, 0, sa, sb)
                if kind == CONTACT:
                    if k < 0 and fric == 0:  # the centroid's load is shared by the points
                        pn[idx, PN_LAM] += load
                        pn[idx, PN_LEFT] += _mu(bf, a, b, ground_mu) * load
                        for j in range(pairs[idx, 2]):
                            cf[idx * MAXC + j, LAM] += load / pairs[idx, 2]
                    elif k < 0:
                        pn[idx, PN_LEFT] -= load
                    elif fric == 0:
                        cf[idx * MAXC + k, LAM] += load
                else:
                    col = FACC
                    if angular != 0:
                        col = TACC
                    for m in ti.static(range(3)):
                        bdf[idx, col + m] += lam / (h * h) * dirn[m]


@ti.func
def _velocity_unit(
    bf: ti.template(),
    bi: ti.template(),
    si: ti.template(),
    pairs: ti.template(),
    pn: ti.template(),
    cf: ti.template(),
    bdf: ti.template(),
    bdi: ti.template(),
    units: ti.template(),
    u,
    h,
    g,
    ground_mu,
    flip,
):
    """The velocity pass over unit u's rows: restitution, friction, bond damping."""
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
                if energy > 0.0:  # atomic: a resting body of another group may be b
                    ti.atomic_max(bf[a, IMPACT], energy)
                    if b >= 0:
                        ti.atomic_max(bf[b, IMPACT], energy)
            else:
                col = FACC
                if angular != 0:
                    col = TACC
                for m in ti.static(range(3)):
                    bdf[idx, col + m] += imp[m] / h


@ti.func
def _span(ustart: ti.template(), phase: ti.template(), j):
    """First row in ulist and number of the units of group j of a phase (see PHASES)."""
    grp = phase[0] + phase[1] * j
    u0 = ustart[grp * NHEIGHTS]
    return u0, ustart[(grp + 1) * NHEIGHTS] - u0


@ti.func
def _nth(u0, n, uu, back):
    """Row in ulist of the uu-th unit walked in a group of n from row u0 (back: from the end)."""
    e = uu
    if back != 0:
        e = n - 1 - uu
    return u0 + e


@ti.kernel
def position_sweep(
    bf: F2,
    bi: I2,
    si: I2,
    pairs: I2,
    pn: F2,
    cf: F2,
    bdf: F2,
    bdi: I2,
    units: I2,
    ustart: I1,
    ulist: I1,
    h: f64,
    gx: f64,
    gy: f64,
    gz: f64,
    ground_mu: f64,
    first: ti.i32,
    flip: ti.i32,
    it: ti.i32,
):
    """Sweep ``it`` of the position pass (sweep 0 first predicts every body: Mueller et al.
    2020, algorithm 2). Multipliers accumulate over the sweeps; alternate sweeps walk each
    group backwards (symmetric Gauss-Seidel down a stack)."""
    g = vec3(gx, gy, gz)
    for i in range(bf.shape[0]):
        if it == 0:
            integrate_body(bf, bi, i, h, g, first)
    back = (flip + it) % 2
    for phase in ti.static(PHASES):
        for jj in range(phase[2] * SPREAD):
            if jj % SPREAD == 0:
                u0, n = _span(ustart, phase, jj // SPREAD)
                for uu in range(n):
                    u = ulist[_nth(u0, n, uu, back)]
                    _position_unit(
                        bf, bi, si, pairs, pn, cf, bdf, bdi, units, u, it, h, g, ground_mu, flip
                    )


@ti.kernel
def velocity_sweep(
    bf: F2,
    bi: I2,
    si: I2,
    pairs: I2,
    pn: F2,
    cf: F2,
    bdf: F2,
    bdi: I2,
    units: I2,
    ustart: I1,
    ulist: I1,
    h: f64,
    gx: f64,
    gy: f64,
    gz: f64,
    ground_mu: f64,
    flip: ti.i32,
):
    """Velocities from the solved positions, then one sweep of the velocity pass."""
    g = vec3(gx, gy, gz)
    for i in range(bf.shape[0]):
        update_body_velocity(bf, bi, i, h)
    for phase in ti.static(PHASES):
        for jj in range(phase[2] * SPREAD):
            if jj % SPREAD == 0:
                u0, n = _span(ustart, phase, jj // SPREAD)
                for uu in range(n):
                    u = ulist[_nth(u0, n, uu, flip)]
                    _velocity_unit(
                        bf, bi, si, pairs, pn, cf, bdf, bdi, units, u, h, g, ground_mu, flip
                    )


@ti.kernel
def wake_touched(
    bf: F2, bi: I2, si: I2, pairs: I2, bdi: I2, units: I2, nunits: ti.i32, v_wake: f64
):
    """Wake sleeping bodies touched (contact or bond) by a body that moves faster than v_wake,
    took an impact this step (IMPACT > 0), or was itself woken by an impact last step (CALM < 0):
    an impact on a sleeping pile wakes two layers, not only the body it hit.
    """
    for u in range(nunits):
        a, b, _ = _unit(bi, si, pairs, bdi, u, units)
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

"""Narrowphase (convex-convex and convex-ground contact manifolds) and the contact constraints.

Hull tables: ``hv: (HV, 3) f64`` hull vertices in the body frame [m]; ``hp: (HF, 4) f64`` hull
face planes in the body frame, outward unit normal (3) and offset [m]: inside is n.p <= d;
``he: (HE, NHE) f64`` hull edges in the body frame: end points EP0, EP1 [m], outward unit
normals EN0, EN1 of the two faces that meet there and EX = EN1 x EN0 (their Gauss-map arc);
``se: (S, 2) i32`` first / end edge row of each shape (rows as in ``si``).

Per pair (rows of ``pairs``) the narrowphase finds the separating axis of least overlap (SAT)
among both hulls' face normals and the cross products of edge pairs (Gregorius, "The
separating axis test between convex polyhedra", GDC 2013). Only edge pairs whose Gauss-map arcs
cross form a face of the Minkowski difference and give an axis: for those the edges are the
supports along it, so the separation is exact; the rest are skipped with two dot products.
An edge axis wins only when it is shallower than the best face axis by EDGE_REL of that depth
plus EDGE_TOL, so a resting face keeps its face manifold.
Face axis: the vertices of each hull that lie within the speculative margin of the other
hull's extent along that axis and whose projection onto it falls inside the other hull: a
face-on contact gives several points, so a box rests flat. At most MAXC points per pair (the
extremes along two tangents, for each side). When no vertex qualifies (faces crossing like a
plus sign), the points are where the two hulls' edges cross seen along the axis (at most 4,
the extremes along the same tangents). Edge axis: one point, the closest points of the two
edges, with the same speculative margin.
Contact rows (``cf: (P * MAXC, NCF) f64``): RA point on A in A's body frame, RB point on B in
B's body frame (world point for the ground), LAM normal multiplier of the last substep [kg m], JN normal impulse of its
velocity pass [N s].
``pn: (P, NPN) f64`` world normal from B towards A (3), found anew every substep; PN_LAM, PN_JN the
multiplier and normal impulse of the manifold's centroid row in the last substep, PN_LEFT the
friction budget the centroid rows left to the corner rows (multiplier, then impulse). Without
it the corners would spend the centroid's normal load on friction a second time.

The constraints follow Mueller et al. 2020 (XPBD rigid bodies): a positional non-penetration
and static-friction correction per substep, then a velocity pass for dynamic friction and
restitution.
"""

from sim_kernels.backend import (
    F2,
    I2,
    f64,
    get3,
    get4,
    quat_conj,
    quat_matrix,
    quat_mul,
    quat_rotate,
    set3,
    ti,
    vec3,
)
from sim_kernels.bodies import (
    MU,
    QP,
    RAD,
    REST,
    VP,
    WP,
    XP,
    Q,
    V,
    W,
    X,
    w_pair,
)

MAXC = 8
NDIR = 7  # slots of a face manifold (see _keep; <= MAXC)
RA, RB, LAM, JN = 0, 3, 6, 7
NCF = 8
PN_LAM, PN_JN, PN_LEFT = 3, 4, 5
NPN = 6
EP0, EP1, EN0, EN1, EX = 0, 3, 6, 9, 12
NHE = 15
EDGE_REL = 0.1  # an edge axis must be shallower than the best face axis by this share of its
EDGE_TOL = 2.5e-3  # depth plus this [m] (Gregorius 2013: faces give the steadier manifold)
EDGE_PARALLEL = 1e-3  # sine below which two edges count as parallel (their axis is undefined)
IMPACT_SPEED = 1.0  # m/s: approach speeds above this damage the bonds of both bodies
MAX_DEPENETRATION = 2.0  # m/s: fastest a contact pushes overlapping bodies apart


@ti.func
def _tangents(n):
    a = vec3(1.0, 0.0, 0.0)
    if ti.abs(n[0]) > 0.57:
        a = vec3(0.0, 1.0, 0.0)
    t1 = n.cross(a).normalized()
    return t1, n.cross(t1)


@ti.func
def _world(bf: ti.template(), b, p):
    return get3(bf, b, X) + quat_rotate(get4(bf, b, Q), p)


@ti.func
def _local(bf: ti.template(), b, p):
    return quat_rotate(quat_conj(get4(bf, b, Q)), p - get3(bf, b, X))


@ti.func
def _extent(bf: ti.template(), b, hv: ti.template(), v0, v1, n, sign):
    """max (sign=1) or min (sign=-1) of n . v over the hull's world vertices."""
    e = -1e30
    for k in range(v0, v1):
        e = ti.max(e, sign * n.dot(_world(bf, b, get3(hv, k, 0))))
    return sign * e


@ti.func
def _extent_local(hv: ti.template(), v0, v1, nl, sign):
    """max (sign=1) or min (sign=-1) of nl . v over the hull's body-frame vertices."""
    e = -1e30
    for k in range(v0, v1):
        e = ti.max(e, sign * nl.dot(get3(hv, k, 0)))
    return sign * e


@ti.func
def _in_a_frame(bf: ti.template(), si: ti.template(), hv: ti.template(), a, b, sa, sb, n):
    """Body B's pose in A's body frame and the slab where the hulls of shapes sa (on A) and
    sb (on B) meet along world axis n (from B towards A): (rotation B -> A frame, B's origin
    in A's frame, n in A's frame, B's extent towards A along it, A's extent towards B)."""
    qa = get4(bf, a, Q)
    rel = quat_matrix(quat_mul(quat_conj(qa), get4(bf, b, Q)))
    t = quat_rotate(quat_conj(qa), get3(bf, b, X) - get3(bf, a, X))
    nl = quat_rotate(quat_conj(qa), n)
    top_b = -1e30
    for k in range(si[sb, 1], si[sb, 2]):
        top_b = ti.max(top_b, nl.dot(rel @ get3(hv, k, 0) + t))
    low_a = 1e30
    for k in range(si[sa, 1], si[sa, 2]):
        low_a = ti.min(low_a, nl.dot(get3(hv, k, 0)))
    return rel, t, nl, top_b, low_a


@ti.func
def _edge_query(
    bf: ti.template(),
    si: ti.template(),
    se: ti.template(),
    hv: ti.template(),
    he: ti.template(),
    a,
    b,
    sa,
    sb,
    n,
    slack,
):
    """Best edge-edge axis of the hulls of shapes sa (body a) and sb (body b).

    Works in A's body frame (B's edges turned into it once each). Only edges reaching into
    the slab where the hulls overlap along the best face axis n (from B towards A), grown by
    ``slack`` [m], are tried: the closest points of a touching or shallower edge pair lie in
    it. Returns (separation [m], edge row on A, edge row on B, world unit axis pointing out
    of A); rows -1 when no edge pair forms a face of the Minkowski difference.
    """
    qa = get4(bf, a, Q)
    rel, t, nl, top_b, low_a = _in_a_frame(bf, si, hv, a, b, sa, sb, n)
    ea0 = se[sa, 0]
    ea1 = se[sa, 1]
    mask = ti.u64(0)  # bit i: A's edge ea0 + i reaches the slab (edges past 64 always try)
    for i in range(ea0, ti.min(ea1, ea0 + 64)):
        if ti.min(nl.dot(get3(he, i, EP0)), nl.dot(get3(he, i, EP1))) <= top_b + slack:
            mask |= ti.u64(1) << ti.u64(i - ea0)
    best = -1e30
    bi = -1
    bj = -1
    bn = vec3(0.0)
    for j in range(se[sb, 0], se[sb, 1]):
        q0 = rel @ get3(he, j, EP0) + t
        q1 = rel @ get3(he, j, EP1) + t
        if ti.max(nl.dot(q0), nl.dot(q1)) < low_a - slack:
            continue
        # Gauss-map arc of B's edge in the Minkowski difference A - B: normals negated
        c = -(rel @ get3(he, j, EN0))
        d = -(rel @ get3(he, j, EN1))
        dxc = rel @ get3(he, j, EX)
        eb = q1 - q0
        lb = eb.norm()
        for i in range(ea0, ea1):
            if i - ea0 < 64 and (mask >> ti.u64(i - ea0)) & ti.u64(1) == ti.u64(0):
                continue
            bxa = get3(he, i, EX)
            cba = c.dot(bxa)
            dba = d.dot(bxa)
            if cba * dba < 0.0:
                na = get3(he, i, EN0)
                nb = get3(he, i, EN1)
                adc = na.dot(dxc)
                bdc = nb.dot(dxc)
                if adc * bdc < 0.0 and cba * bdc > 0.0:
                    p0 = get3(he, i, EP0)
                    ea = get3(he, i, EP1) - p0
                    ax = ea.cross(eb)
                    ln = ax.norm()
                    if ln > EDGE_PARALLEL * ea.norm() * lb:
                        ax = ax / ln
                        if ax.dot(na + nb) < 0.0:
                            ax = -ax
                        sep = ax.dot(q0 - p0)
                        if sep > best:
                            best = sep
                            bi = i
                            bj = j
                            bn = ax
    return best, bi, bj, quat_rotate(qa, bn)


@ti.func
def _closest_on_segments(p0, p1, q0, q1):
    """Closest points of segments p0-p1 and q0-q1 (Ericson 2005, 5.1.9); both non-degenerate."""
    d1 = p1 - p0
    d2 = q1 - q0
    r = p0 - q0
    aa = d1.dot(d1)
    ee = d2.dot(d2)
    ff = d2.dot(r)
    cc = d1.dot(r)
    bb = d1.dot(d2)
    den = aa * ee - bb * bb
    s = 0.0
    if den > 1e-12 * aa * ee:
        s = ti.min(ti.max((bb * ff - cc * ee) / den, 0.0), 1.0)
    u = (bb * s + ff) / ee
    if u < 0.0:
        u = 0.0
        s = ti.min(ti.max(-cc / aa, 0.0), 1.0)
    elif u > 1.0:
        u = 1.0
        s = ti.min(ti.max((bb - cc) / aa, 0.0), 1.0)
    return p0 + s * d1, q0 + u * d2


@ti.func
def _crossing(p0, p1, q0, q1, t1, t2):
    """Where segments p0-p1 and q0-q1 cross seen in the plane of tangents t1, t2.

    Returns (1 when they cross, the crossing point on the first, that on the second)."""
    d1 = p1 - p0
    d2 = q1 - q0
    r = q0 - p0
    a1 = d1.dot(t1)
    a2 = d1.dot(t2)
    b1 = d2.dot(t1)
    b2 = d2.dot(t2)
    r1 = r.dot(t1)
    r2 = r.dot(t2)
    den = a1 * b2 - a2 * b1
    ok = 0
    s = 0.0
    u = 0.0
    if ti.abs(den) > EDGE_PARALLEL * ti.sqrt((a1 * a1 + a2 * a2) * (b1 * b1 + b2 * b2)):
        s = (r1 * b2 - r2 * b1) / den
        u = (r1 * a2 - r2 * a1) / den
        if s >= 0.0 and s <= 1.0 and u >= 0.0 and u <= 1.0:
            ok = 1
    return ok, p0 + s * d1, q0 + u * d2


@ti.func
def _cast(bf: ti.template(), b, hp: ti.template(), f0, f1, p, d, tol):
    """The line p + t d (world, d unit) against hull [f0, f1) of body b.

    Returns (1 when the line passes through the hull grown by tol, the t where it leaves the
    hull): for a point of another hull, its depth along d below this hull's surface there
    (negative: a gap). The hull's extent along d is the depth only under its extreme vertex;
    a tilted face pushed at that depth everywhere turns the bodies the wrong way.
    """
    lp = _local(bf, b, p)
    ld = quat_rotate(quat_conj(get4(bf, b, Q)), d)
    t_out = 1e30
    t_out_g = 1e30
    t_in_g = -1e30
    hit = 1
    for f in range(f0, f1):
        nf = vec3(hp[f, 0], hp[f, 1], hp[f, 2])
        den = nf.dot(ld)
        gap = hp[f, 3] - nf.dot(lp)  # >= 0 on the inner side of face f
        if den > 1e-9:
            t_out = ti.min(t_out, gap / den)
            t_out_g = ti.min(t_out_g, (gap + tol) / den)
        elif den < -1e-9:
            t_in_g = ti.max(t_in_g, (gap + tol) / den)
        elif gap + tol < 0.0:
            hit = 0
    if t_in_g > t_out_g:
        hit = 0
    return hit, t_out


@ti.func
def _keep(bv, bid, spa, spb, cid, u1, u2, q, pa, pb, depth):
    """Keep candidate cid (tangent position q, world points pa on A, pb on B, depth along the
    normal) in the slots where it is the best so far: the furthest along each of 6 tangent
    directions (a hexagon: the corners of the contact region), and the deepest. Without the
    last, the speculative ring of a fast pair takes the extremes and a deep vertex inside it
    goes unseen.
    """
    c = 0.5 * u1
    d = 0.8660254037844386 * u2
    e = ti.Vector(
        [u1.dot(q), -u1.dot(q), (c + d).dot(q), -(c + d).dot(q), (c - d).dot(q), -(c - d).dot(q)]
        + [depth],
        dt=f64,
    )
    for j in ti.static(range(NDIR)):
        if e[j] > bv[j]:
            bv[j] = e[j]
            bid[j] = cid
            for k in ti.static(range(3)):
                spa[j, k] = pa[k]
                spb[j, k] = pb[k]
    return bv, bid, spa, spb


@ti.kernel
def narrowphase(
    bf: F2,
    si: I2,
    se: I2,
    hv: F2,
    hp: F2,
    he: F2,
    dt: f64,
    margin: f64,
    npairs: ti.i32,
    pairs: I2,
    pn: F2,
    cf: F2,
):
    """Contact manifold of every pair: pairs[p, 2] receives its point count (0..MAXC)."""
    for p in range(npairs):
        sh = ti.Vector([pairs[p, 0], pairs[p, 1]], dt=ti.i32)
        a = si[sh[0], 0]
        b = -1
        if sh[1] >= 0:
            b = si[sh[1], 0]
        speed = get3(bf, a, V).norm() + get3(bf, a, W).norm() * bf[a, RAD]
        n = vec3(0.0, 1.0, 0.0)  # from B towards A
        best_sep = 0.0
        rad = bf[a, RAD]
        if b >= 0:
            speed += get3(bf, b, V).norm() + get3(bf, b, W).norm() * bf[b, RAD]
            rad = ti.min(rad, bf[b, RAD])
        m = margin + speed * dt
        if b >= 0:
            # bounding spheres apart by more than the margin: no contact, and no SAT
            best_sep = (get3(bf, a, X) - get3(bf, b, X)).norm() - bf[a, RAD] - bf[b, RAD]
            if best_sep < m:
                # SAT over the face normals of both hulls; a face separating the pair beyond
                # the margin ends it (there is no contact, whichever face separates most)
                best_sep = -1e30
                for side in range(2):
                    own = a
                    other = b
                    if side == 1:
                        own = b
                        other = a
                    so = sh[1 - side]
                    qo = quat_conj(get4(bf, other, Q))
                    if best_sep < m:
                        for f in range(si[sh[side], 3], si[sh[side], 4]):
                            nw = quat_rotate(get4(bf, own, Q), vec3(hp[f, 0], hp[f, 1], hp[f, 2]))
                            dw = hp[f, 3] + nw.dot(get3(bf, own, X))
                            # the other hull's extent along nw, taken in its own frame
                            lo = _extent_local(hv, si[so, 1], si[so, 2], quat_rotate(qo, nw), -1.0)
                            sep = lo + nw.dot(get3(bf, other, X)) - dw
                            if sep > best_sep:
                                best_sep = sep
                                n = nw
                                if side == 0:
                                    n = -nw
                            if best_sep >= m:
                                break
        nc = 0
        row0 = p * MAXC
        edge = 0  # 1: an edge axis won; 2: it stands in for a face axis that found no points
        esep = 1e30
        ei = -1
        ej = -1
        ax = vec3(0.0)
        if b >= 0 and best_sep < m:
            esep, ei, ej, ax = _edge_query(
                bf, si, se, hv, he, a, b, sh[0], sh[1], n, m + ti.max(-best_sep, 0.0)
            )
            if ei >= 0 and esep > best_sep + EDGE_REL * ti.abs(best_sep) + EDGE_TOL:
                edge = 1
                n = -ax
                best_sep = esep
            elif esep >= m:
                best_sep = esep  # an edge axis separates the pair beyond the margin
        if edge == 0 and best_sep < m:
            # candidates: each hull's vertices cast along n onto the other's surface, and
            # (hull pairs) the crossings of their edges seen along n; the manifold keeps the
            # extremes along 6 tangent directions and the deepest
            t1, t2 = _tangents(n)
            u1 = 0.921 * t1 + 0.389 * t2  # a turned basis: no ties on axis-aligned faces
            u2 = -0.389 * t1 + 0.921 * t2
            tol = 1e-4 + 0.02 * rad
            bv = ti.Vector([-1e30] * NDIR, dt=f64)
            bid = ti.Vector([-1] * NDIR, dt=ti.i32)
            spa = ti.Matrix([[0.0] * 3] * NDIR, dt=f64)  # world points on A / B of each slot
            spb = ti.Matrix([[0.0] * 3] * NDIR, dt=f64)
            cid = 0
            for side in range(2):
                # side 0: vertices of A against B along n; side 1: B's against A along -n
                ref = a
                other = b
                sgn = 1.0
                if side == 1:
                    ref = b
                    other = a
                    sgn = -1.0
                plane = 0.0
                if b >= 0:
                    so = sh[1 - side]
                    plane = _extent(bf, other, hv, si[so, 1], si[so, 2], n, sgn)
                if ref >= 0:
                    for k in range(si[sh[side], 1], si[sh[side], 2]):
                        q = _world(bf, ref, get3(hv, k, 0))
                        depth = sgn * (plane - n.dot(q))  # the other's extent: an upper bound
                        if depth > -m:
                            hit = 1
                            if b >= 0:
                                so = sh[1 - side]
                                hit, depth = _cast(
                                    bf, other, hp, si[so, 3], si[so, 4], q, sgn * n, tol
                                )
                            if hit != 0 and depth > -m:
                                on_other = q + sgn * depth * n
                                pa = q
                                pb = on_other
                                if side == 1:
                                    pa = on_other
                                    pb = q
                                bv, bid, spa, spb = _keep(
                                    bv, bid, spa, spb, cid, u1, u2, q, pa, pb, depth
                                )
                            cid += 1
            if b >= 0:
                # where the hulls' edges cross seen along n (faces crossing like a plus sign,
                # a tilted edge across a face): in A's body frame, B's edges turned into it
                qa = get4(bf, a, Q)
                rel, t, nl, top_b, low_a = _in_a_frame(bf, si, hv, a, b, sh[0], sh[1], n)
                l1 = quat_rotate(quat_conj(qa), t1)
                l2 = quat_rotate(quat_conj(qa), t2)
                # a crossing within the margin needs both edges within it of the other hull
                for j in range(se[sh[1], 0], se[sh[1], 1]):
                    q0 = rel @ get3(he, j, EP0) + t
                    q1 = rel @ get3(he, j, EP1) + t
                    if ti.max(nl.dot(q0), nl.dot(q1)) < low_a - m:
                        continue
                    for i in range(se[sh[0], 0], se[sh[0], 1]):
                        p0 = get3(he, i, EP0)
                        p1 = get3(he, i, EP1)
                        if ti.min(nl.dot(p0), nl.dot(p1)) > top_b + m:
                            continue
                        ok, pa, pb = _crossing(p0, p1, q0, q1, l1, l2)
                        if ok != 0 and nl.dot(pb - pa) > -m:
                            wa = _world(bf, a, pa)
                            bv, bid, spa, spb = _keep(
                                bv,
                                bid,
                                spa,
                                spb,
                                cid,
                                u1,
                                u2,
                                wa,
                                wa,
                                _world(bf, a, pb),
                                nl.dot(pb - pa),
                            )
                        cid += 1
            for j in ti.static(range(NDIR)):
                dup = 0
                for jj in ti.static(range(j)):
                    if bid[jj] == bid[j]:
                        dup = 1
                if bid[j] >= 0 and dup == 0:
                    pa = vec3(spa[j, 0], spa[j, 1], spa[j, 2])
                    pb = vec3(spb[j, 0], spb[j, 1], spb[j, 2])
                    set3(cf, row0 + nc, RA, _local(bf, a, pa))
                    if b < 0:
                        set3(cf, row0 + nc, RB, pb)
                    else:
                        set3(cf, row0 + nc, RB, _local(bf, b, pb))
                    cf[row0 + nc, LAM] = 0.0
                    nc += 1
        if edge != 0 and esep < m:
            pa, pb = _closest_on_segments(
                _world(bf, a, get3(he, ei, EP0)),
                _world(bf, a, get3(he, ei, EP1)),
                _world(bf, b, get3(he, ej, EP0)),
                _world(bf, b, get3(he, ej, EP1)),
            )
            set3(cf, row0, RA, _local(bf, a, pa))
            set3(cf, row0, RB, _local(bf, b, pb))
            cf[row0, LAM] = 0.0
            nc = 1
        set3(pn, p, 0, n)
        pairs[p, 2] = nc


@ti.func
def _pair_bodies(si: ti.template(), pairs: ti.template(), p):
    a = si[pairs[p, 0], 0]
    b = -1
    if pairs[p, 1] >= 0:
        b = si[pairs[p, 1], 0]
    return a, b


@ti.func
def _attach(bf: ti.template(), b, r_local, prev: ti.template()):
    """World offset and world point of a body-frame point (b < 0: r_local is a world point)."""
    r = vec3(0.0)
    p = r_local
    if b >= 0:
        if ti.static(prev):
            r = quat_rotate(get4(bf, b, QP), r_local)
            p = get3(bf, b, XP) + r
        else:
            r = quat_rotate(get4(bf, b, Q), r_local)
            p = get3(bf, b, X) + r
    return r, p


@ti.func
def _mu(bf: ti.template(), a, b, ground_mu) -> f64:
    mu = bf[a, MU]
    if b >= 0:
        mu = ti.min(mu, bf[b, MU])
    else:
        mu = ti.min(mu, ground_mu)
    return mu


@ti.func
def _point(cf: ti.template(), pairs: ti.template(), p, k):
    """Body-frame attachment points of contact point k of pair p; k < 0: the manifold centroid.

    Solving the centroid first removes the mean penetration and slip of a face contact in one
    row without tilting the body; the per-point rows then only fix what is left (tilt, twist).
    Gauss-Seidel over the corners alone walks a resting box sideways.
    """
    ra = vec3(0.0)
    rb = vec3(0.0)
    if k >= 0:
        ra = get3(cf, p * MAXC + k, RA)
        rb = get3(cf, p * MAXC + k, RB)
    else:
        nc = pairs[p, 2]
        for j in range(nc):
            ra += get3(cf, p * MAXC + j, RA) / nc
            rb += get3(cf, p * MAXC + j, RB) / nc
    return ra, rb


@ti.func
def contact_position_row(
    bf: ti.template(),
    bi: ti.template(),
    si: ti.template(),
    pairs: ti.template(),
    pn: ti.template(),
    cf: ti.template(),
    p,
    k,
    fric,
    ground_mu,
    h,
):
    """Non-penetration (fric = 0) or static friction (fric = 1) of point k (k < 0: centroid).

    A penetration older than the substep is pushed out by at most MAX_DEPENETRATION * h per
    substep: the push becomes velocity (v = dx / h), and a piece squeezed between others would
    leave at tens of m/s. The overlap the substep's own motion made is removed whole: capping
    it too would let a fast piece sink MAX_DEPENETRATION * h deeper every substep.

    Returns (valid, direction on A, offset on A, offset on B, error to remove [m], limit on the
    multiplier [kg m]).
    """
    a, b = _pair_bodies(si, pairs, p)
    n = get3(pn, p, 0)
    la, lb = _point(cf, pairs, p, k)
    ra, pa = _attach(bf, a, la, 0)
    rb, pb = _attach(bf, b, lb, 0)
    nc = pairs[p, 2]
    mu = _mu(bf, a, b, ground_mu)
    budget = pn[p, PN_LEFT]
    if k >= 0:
        budget = pn[p, PN_LEFT] / nc + mu * (cf[p * MAXC + k, LAM] - pn[p, PN_LAM] / nc)
    valid = 0
    dirn = n
    c = 0.0
    limit = 1e30
    if fric == 0:
        # the overlap this substep's motion made is removed whole (stopping an approach at
        # any speed); only an overlap older than the substep is pushed out at the capped rate
        _, pa0 = _attach(bf, a, la, 1)
        _, pb0 = _attach(bf, b, lb, 1)
        depth = n.dot(pb - pa)
        c = ti.min(depth, depth - ti.max(n.dot(pb0 - pa0), 0.0) + MAX_DEPENETRATION * h)
        if c > 0.0:
            valid = 1
    elif budget > 0.0:
        # slip of the two attachment points over this substep (Mueller et al. 2020, eq. 29)
        _, pa0 = _attach(bf, a, la, 1)
        _, pb0 = _attach(bf, b, lb, 1)
        dp = (pa - pa0) - (pb - pb0)
        dpt = dp - dp.dot(n) * n
        c = dpt.norm()
        if c > 1e-12:
            valid = 1
            dirn = -dpt / c
            limit = budget
    return valid, dirn, ra, rb, c, limit


@ti.func
def contact_velocity_row(
    bf: ti.template(),
    bi: ti.template(),
    si: ti.template(),
    pairs: ti.template(),
    pn: ti.template(),
    cf: ti.template(),
    p,
    k,
    fric,
    h,
    g_dir,
    g_norm,
    ground_mu,
):
    """Restitution (fric = 0) or dynamic friction (fric = 1) of point k (k < 0: centroid).

    Separate projections (normal first), so neither can add energy.
    Returns (valid, impulse on A [N s], offset on A, offset on B, impact energy [J]).
    """
    a, b = _pair_bodies(si, pairs, p)
    lam = pn[p, PN_LAM]
    jn_col = PN_JN
    if k >= 0:
        lam = cf[p * MAXC + k, LAM]
    imp = vec3(0.0)
    ra = vec3(0.0)
    rb = vec3(0.0)
    valid = 0
    energy = 0.0
    mode = 0
    if k < 0 and fric != 0 and pairs[p, 2] >= 3 and ti.abs(get3(pn, p, 0).dot(g_dir)) > 0.7071:
        mode = 2  # a resting face's friction moves it as a whole (see solve._supporting)
    if lam > 0.0:
        n = get3(pn, p, 0)
        la, lb = _point(cf, pairs, p, k)
        ra, _ = _attach(bf, a, la, 0)
        rb, _ = _attach(bf, b, lb, 0)
        vrel = get3(bf, a, V) + get3(bf, a, W).cross(ra)
        if b >= 0:
            vrel -= get3(bf, b, V) + get3(bf, b, W).cross(rb)
        vn = n.dot(vrel)
        if fric == 0:
            e = bf[a, REST]
            vpre = get3(bf, a, VP) + get3(bf, a, WP).cross(ra)
            if b >= 0:
                e = ti.max(e, bf[b, REST])
                vpre -= get3(bf, b, VP) + get3(bf, b, WP).cross(rb)
            vn_pre = n.dot(vpre)
            if ti.abs(vn_pre) <= 2.0 * g_norm * h:
                e = 0.0  # resting contact: no bounce from the gravity of one substep
            wn = w_pair(bf, bi, a, b, ra, rb, n, mode)
            jn = (-vn + ti.max(-e * vn_pre, 0.0)) / wn
            if k >= 0:
                cf[p * MAXC + k, JN] = ti.max(jn, 0.0)
            else:
                pn[p, jn_col] = ti.max(jn, 0.0)
                pn[p, PN_LEFT] = _mu(bf, a, b, ground_mu) * (lam / h + ti.max(jn, 0.0))
            imp = jn * n
            valid = 1
            if -vn_pre > IMPACT_SPEED:
                energy = 0.5 * vn_pre * vn_pre / wn
        else:
            vt = vrel - vn * n
            st = vt.norm()
            if st > 1e-12:
                nc = pairs[p, 2]
                budget = pn[p, PN_LEFT]
                if k >= 0:
                    own = lam - pn[p, PN_LAM] / nc
                    budget = budget / nc + _mu(bf, a, b, ground_mu) * (
                        own / h + cf[p * MAXC + k, JN]
                    )
                t = vt / st
                wt = w_pair(bf, bi, a, b, ra, rb, t, mode)
                jt = ti.min(budget, st / wt)
                if k < 0:
                    pn[p, PN_LEFT] -= jt
                imp = -jt * t
                valid = 1
    return valid, imp, ra, rb, energy

"""Glue bonds: a rigid weld between two pieces (or a piece and the ground) that breaks on stress.

Bond tables, one row per bond in the order added:
``bdf: (B, NBD) f64``
    RA attachment in A's body frame [m] (3), RB attachment in B's body frame, or the world point
    for a ground bond [m] (3), QREL rest rotation of B relative to A, wxyz: q_B = q_A * QREL
    (ground: q_A * QREL = identity) (4), NRM bond normal in A's body frame, from A towards B (3),
    AREA [m^2], TEN / SHR / CMP strengths [Pa], DMG damage 0..1 (strengths scale by 1 - DMG),
    FACC force on A summed over the step's substeps [N] (3), TACC torque on A [N m] (3),
    RATIO the largest stress / strength of the last step a body of the bond moved in (the bond
    breaks when RATIO >= 1 - DMG), LROT / LPOS the rows' multipliers summed over this substep's
    sweeps, AROT / APOS their compliances: L / (E I) [rad / (N m)] and L / (E A) [m / N].

Compliance (XPBD) makes the glue elastic with the material's stiffness, so redundant bonds
share a load by stiffness: a bond over a sliver of area cannot take the bending moment of a
full face (rigid constraints would split loads by the Gauss-Seidel order instead).
``bdi: (B, NBDI) i32``  A, B (-1 = ground), BROKEN (0/1).

Breaking follows the parallel-bond model of Potyondy & Cundall (2004): normal stress from
the axial force and the bending moment, shear stress from the shear force and the twist,
with the bond face taken as a square of the same area (I = s^4/12, J = s^4/6, s = sqrt(area)).
The force is the constraint's total impulse (position pass lambda / h plus velocity-pass
impulse) averaged over the step's substeps: single XPBD multipliers are noisy.
"""

from sim_kernels.backend import (
    F2,
    I2,
    get3,
    get4,
    quat_conj,
    quat_mul,
    quat_rotate,
    set3,
    ti,
    vec3,
    vec4,
)
from sim_kernels.bodies import IMPACT, WAKE, Q, V, W, movable, w_pair
from sim_kernels.contacts import _attach

RA, RB, QREL, NRM, AREA, TEN, SHR, CMP, DMG, FACC, TACC, RATIO = (
    0,
    3,
    6,
    10,
    13,
    14,
    15,
    16,
    17,
    18,
    21,
    24,
)
LROT, LPOS, AROT, APOS = 25, 26, 27, 28
NBD = 29
A, B, BROKEN = 0, 1, 2
NBDI = 3
IMPACT_TOUGHNESS_LENGTH = 0.01  # m: impact energy that breaks a bond = tensile * area * this


@ti.func
def _rot(bf: ti.template(), b) -> vec4:
    q = vec4(1.0, 0.0, 0.0, 0.0)
    if b >= 0:
        q = get4(bf, b, Q)
    return q


@ti.func
def bond_position_row(bf: ti.template(), bdf: ti.template(), bdi: ti.template(), k, r):
    """Row r of bond k: 0 = orientation (angular), 1 = attachment points together.

    Returns (valid, direction on A, offset on A, offset on B, error [rad or m], angular).
    """
    a = bdi[k, A]
    b = bdi[k, B]
    ra, pa = _attach(bf, a, get3(bdf, k, RA), 0)
    rb, pb = _attach(bf, b, get3(bdf, k, RB), 0)
    valid = 0
    dirn = vec3(1.0, 0.0, 0.0)
    c = 0.0
    if r == 0:
        target = quat_mul(get4(bf, a, Q), get4(bdf, k, QREL))
        err = quat_mul(_rot(bf, b), quat_conj(target))
        dphi = 2.0 * vec3(err[1], err[2], err[3])
        if err[0] < 0:
            dphi = -dphi
        c = dphi.norm()
        if c > 1e-12:
            valid = 1
            dirn = dphi / c
    else:
        d = pb - pa
        c = d.norm()
        if c > 1e-14:
            valid = 1
            dirn = d / c
    return valid, dirn, ra, rb, c, 1 - r


@ti.func
def bond_velocity_row(
    bf: ti.template(), bi: ti.template(), bdf: ti.template(), bdi: ti.template(), k, r, h
):
    """Damp the bond's relative motion: row 0 the relative point velocity, row 1 the relative
    spin. The impulse has the compliance of the position rows (dv / (w + alpha / h^2)), so a
    stiff bond takes out nearly all of it and a sliver of glue only its stiffness share: a
    rigid velocity row would hand a whole piece's momentum to whichever bond the sweep meets
    first. Returns (valid, impulse on A, offset on A, offset on B, angular).
    """
    a = bdi[k, A]
    b = bdi[k, B]
    ra, _ = _attach(bf, a, get3(bdf, k, RA), 0)
    rb, _ = _attach(bf, b, get3(bdf, k, RB), 0)
    dv = vec3(0.0)
    if r == 0:
        dv = -(get3(bf, a, V) + get3(bf, a, W).cross(ra))
        if b >= 0:
            dv += get3(bf, b, V) + get3(bf, b, W).cross(rb)
    else:
        dv = -get3(bf, a, W)
        if b >= 0:
            dv += get3(bf, b, W)
    s = dv.norm()
    valid = 0
    imp = vec3(0.0)
    if s > 1e-14:
        n = dv / s
        w = w_pair(bf, bi, a, b, ra, rb, n, r)
        if w > 0.0:
            col = APOS
            if r != 0:
                col = AROT
            valid = 1
            imp = s / (w + bdf[k, col] / (h * h)) * n
    return valid, imp, ra, rb, r


@ti.kernel
def bonds_end_step(bf: F2, bi: I2, bdf: F2, bdi: I2, substeps: ti.i32, breakable: ti.i32):
    """Stress of every intact bond from its step-averaged load; break, damage, wake.

    breakable = 0 only measures (a building settling in its pre-roll): no bond breaks and no
    impact damage accumulates, whichever of the bond's bodies was hit.
    """
    for k in range(bdi.shape[0]):
        if bdi[k, BROKEN] == 0:
            a = bdi[k, A]
            b = bdi[k, B]
            if movable(bi, a) + movable(bi, b) > 0:  # else asleep: the last load still holds
                f = get3(bdf, k, FACC) / substeps
                tq = get3(bdf, k, TACC) / substeps
                n = quat_rotate(get4(bf, a, Q), get3(bdf, k, NRM))
                area = bdf[k, AREA]
                s3 = area * ti.sqrt(area)
                fn = f.dot(n)  # > 0: A is pulled towards B (tension)
                fs = (f - fn * n).norm()
                mt = ti.abs(tq.dot(n))
                mb = (tq - tq.dot(n) * n).norm()
                bend = 6.0 * mb / s3
                sig_t = ti.max(fn, 0.0) / area + bend
                sig_c = ti.max(-fn, 0.0) / area + bend
                tau = fs / area + 4.2426 * mt / s3
                bdf[k, RATIO] = ti.max(
                    sig_t / bdf[k, TEN], ti.max(tau / bdf[k, SHR], sig_c / bdf[k, CMP])
                )
            if breakable != 0:  # held bonds (pre-roll) take no impact damage from either body
                area = bdf[k, AREA]
                impact = bf[a, IMPACT]
                if b >= 0:
                    impact = ti.max(impact, bf[b, IMPACT])
                dmg = bdf[k, DMG] + impact / (bdf[k, TEN] * area * IMPACT_TOUGHNESS_LENGTH)
                dmg = ti.min(dmg, 1.0)
                bdf[k, DMG] = dmg
                if bdf[k, RATIO] >= 1.0 - dmg or dmg >= 1.0:
                    bdi[k, BROKEN] = 1
                    bdf[k, DMG] = 1.0
                    bi[a, WAKE] = 1
                    if b >= 0:
                        bi[b, WAKE] = 1
        set3(bdf, k, FACC, vec3(0.0))
        set3(bdf, k, TACC, vec3(0.0))

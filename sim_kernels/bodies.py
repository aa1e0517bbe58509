"""Rigid bodies: the body tables, exact gravity integration, velocity update, sleeping.

Body tables (one row per body, columns named below):
``bf: (n, NBF) f64``
    X position of the centre of mass [m] (3), Q rotation wxyz local -> world (4), V velocity
    [m/s] (3), W angular velocity, world [rad/s] (3), XP/QP/VP/WP the same at the start of the
    substep, INVM inverse mass [1/kg] (0 = immovable), INVI inverse inertia in the body frame
    [1/(kg m^2)] (9, row major), INER inertia in the body frame [kg m^2] (9), MU friction
    coefficient, REST restitution, IMPACT largest impact energy this step [J], RAD bounding
    radius about the centre of mass [m], TOUCH 1 when a constraint moved the body in the last
    substep.
``bi: (n, NBI) i32``
    FLAGS (FIXED=1: never moves, KINEMATIC=2: moves with its velocity, ignores contacts),
    SLEEP (1 = asleep: treated as immovable until woken), CALM frames in a row below the sleep
    speed (-1: just woken by an impact), WAKE (1 = wake at the end of this step, 2 = woken by
    an impact).
"""

from sim_kernels.backend import (
    F2,
    I2,
    f64,
    get3,
    get4,
    mat3,
    quat_add_rotation,
    quat_conj,
    quat_matrix,
    quat_mul,
    set3,
    set4,
    ti,
    vec3,
)

X, Q, V, W, XP, QP, VP, WP = 0, 3, 7, 10, 13, 16, 20, 23
INVM, INVI, INER, MU, REST, IMPACT, RAD, TOUCH = 26, 27, 36, 45, 46, 47, 48, 49
NBF = 50
FLAGS, SLEEP, CALM, WAKE = 0, 1, 2, 3
NBI = 4
FIXED, KINEMATIC = 1, 2


@ti.func
def get_m3(a: ti.template(), i, c: ti.template()) -> mat3:
    m = mat3(0.0)
    for r in ti.static(range(3)):
        for k in ti.static(range(3)):
            m[r, k] = a[i, c + 3 * r + k]
    return m


@ti.func
def movable(bi: ti.template(), i) -> ti.i32:
    """1 when body i takes part in the solve (dynamic and awake); i < 0 is the ground."""
    r = 0
    if i >= 0:  # noqa: SIM102 - Taichi's `and` does not short-circuit: guard the index
        if bi[i, FLAGS] == 0 and bi[i, SLEEP] == 0:
            r = 1
    return r


@ti.func
def inv_inertia_world(bf: ti.template(), i) -> mat3:
    R = quat_matrix(get4(bf, i, Q))
    return R @ get_m3(bf, i, INVI) @ R.transpose()


@ti.func
def w_pair(bf: ti.template(), bi: ti.template(), a, b, ra, rb, n, angular, sa=1.0, sb=1.0) -> f64:
    """Generalised inverse mass of the pair (a, b) for a push along unit n.

    angular = 0: a linear push at world offsets ra / rb; 1: a rotation about axis n; 2: a
    push of the centres of mass only (the block solution of a face contact, which the contact's
    corners keep from tilting).
    Bodies that are not movable (fixed, kinematic, asleep, the ground) count as infinite mass.
    ``sa`` / ``sb`` scale each body's inverse mass and inertia (the contacts' mass scaling,
    :data:`sim_kernels.solve.MASS_SCALE_PER_M`).
    """
    w = 0.0
    for side in range(2):
        i = a
        r = ra
        s = sa
        if side == 1:
            i = b
            r = rb
            s = sb
        if movable(bi, i) != 0:
            Iinv = inv_inertia_world(bf, i)
            if angular == 1:
                w += s * n.dot(Iinv @ n)
            elif angular == 2:
                w += s * bf[i, INVM]
            else:
                rn = r.cross(n)
                w += s * (bf[i, INVM] + rn.dot(Iinv @ rn))
    return w


@ti.func
def apply_pair(
    bf: ti.template(), bi: ti.template(), a, b, ra, rb, p, angular, velocity, sa=1.0, sb=1.0
):
    """Apply +p to body a and -p to body b (times ``sa`` and ``sb``).

    p: a positional 'impulse' [kg m] (velocity = 0: moves x and q) or an impulse [N s]
    (velocity = 1: changes v and w); angular as in :func:`w_pair` (1: p is rotational);
    ``sa`` / ``sb`` as in :func:`w_pair`.
    """
    for side in range(2):
        i = a
        r = ra
        sign = sa
        if side == 1:
            i = b
            r = rb
            sign = -sb
        if movable(bi, i) != 0:
            Iinv = inv_inertia_world(bf, i)
            lin = bf[i, INVM] * p
            dth = vec3(0.0)
            if angular == 0:
                dth = Iinv @ r.cross(p)
            elif angular == 1:
                lin = vec3(0.0)
                dth = Iinv @ p
            if velocity != 0:
                set3(bf, i, V, get3(bf, i, V) + sign * lin)
                set3(bf, i, W, get3(bf, i, W) + sign * dth)
            else:
                set3(bf, i, X, get3(bf, i, X) + sign * lin)
                set4(bf, i, Q, quat_add_rotation(get4(bf, i, Q), sign * dth))
                bf[i, TOUCH] = 1.0


@ti.func
def point_velocity(bf: ti.template(), i, r) -> vec3:
    v = vec3(0.0)
    if i >= 0:
        v = get3(bf, i, V) + get3(bf, i, W).cross(r)
    return v


@ti.func
def integrate_body(bf: ti.template(), bi: ti.template(), i, h, g, first):
    """Predict body i over one substep (symplectic Euler: v += g h, x += v h).

    Inside a step V holds the mid-substep velocity (Mueller et al. 2020 use v = dx/h), so
    the first substep turns the true velocity into the one half a substep earlier
    (v - g h/2); :func:`end_step` turns it back for bodies no constraint held. With that, free
    fall is exact (x = x0 + v0 t + g t^2 / 2 at every substep) and a resting body has v = 0.
    """
    for c in ti.static(range(13)):
        bf[i, XP + c] = bf[i, X + c]  # X, Q, V, W -> XP, QP, VP, WP (contiguous)
    held = bf[i, TOUCH]  # held by a constraint at the end of the last step: V is not converted
    bf[i, TOUCH] = 0.0
    fl = bi[i, FLAGS]
    if fl == KINEMATIC:
        set3(bf, i, X, get3(bf, i, X) + h * get3(bf, i, V))
        set4(bf, i, Q, quat_add_rotation(get4(bf, i, Q), h * get3(bf, i, W)))
    elif fl == 0 and bi[i, SLEEP] == 0:
        v = get3(bf, i, V) + h * g
        if first != 0 and held == 0.0:
            v -= 0.5 * h * g
        set3(bf, i, V, v)
        set3(bf, i, X, get3(bf, i, X) + h * v)
        q = get4(bf, i, Q)
        w = get3(bf, i, W)
        R = quat_matrix(q)
        Iw = R @ get_m3(bf, i, INER) @ R.transpose()
        Iinv = R @ get_m3(bf, i, INVI) @ R.transpose()
        w = w + h * (Iinv @ (-w.cross(Iw @ w)))  # gyroscopic term
        set3(bf, i, W, w)
        set4(bf, i, Q, quat_add_rotation(q, h * w))


@ti.func
def update_body_velocity(bf: ti.template(), bi: ti.template(), i, h):
    """Velocities from the solved positions."""
    if bi[i, FLAGS] == 0 and bi[i, SLEEP] == 0:
        set3(bf, i, V, (get3(bf, i, X) - get3(bf, i, XP)) / h)
        dq = quat_mul(get4(bf, i, Q), quat_conj(get4(bf, i, QP)))
        w = 2.0 / h * vec3(dq[1], dq[2], dq[3])
        if dq[0] < 0:
            w = -w
        set3(bf, i, W, w)


@ti.kernel
def end_step(bf: F2, bi: I2, v_sleep: f64, calm_frames: ti.i32, h: f64, gx: f64, gy: f64, gz: f64):
    """After a step: count calm frames, sleep or wake bodies, back to true velocities.

    The sleep test uses the mid-substep velocity, which is exactly 0 for a body at rest.
    """
    for i in range(bf.shape[0]):
        if bi[i, FLAGS] == 0:
            if bi[i, WAKE] != 0:
                bi[i, SLEEP] = 0
                bi[i, CALM] = 0
                if bi[i, WAKE] == 2:
                    bi[i, CALM] = -1  # woken by an impact: wakes what it touches next step
                bi[i, WAKE] = 0
            elif bi[i, SLEEP] == 0:
                s = get3(bf, i, V).norm() + get3(bf, i, W).norm() * bf[i, RAD]
                if s < v_sleep:
                    bi[i, CALM] += 1
                else:
                    bi[i, CALM] = 0
                if bi[i, CALM] >= calm_frames:
                    bi[i, SLEEP] = 1
                    set3(bf, i, V, vec3(0.0))
                    set3(bf, i, W, vec3(0.0))
                elif bf[i, TOUCH] == 0.0:
                    # free: the mid-substep velocity + g h/2 is the exact end velocity; a body
                    # held by a constraint ends at the velocity the solve left (0 at rest)
                    set3(bf, i, V, get3(bf, i, V) + 0.5 * h * vec3(gx, gy, gz))
        bf[i, IMPACT] = 0.0

"""Exact rasterisation of the merged mesh: per-pixel triangle, depth, id, normal, motion.

numba kernels over arrays (DESIGN.md sections 1 and 3). The id pass must be exact (no blended
edges), and motion and occlusion must be exact, so these buffers come from one point-sampled
rasteriser instead of the anti-aliased GL render:

- each pixel is sampled once at its centre; a triangle covers it when the pixel's ray passes
  through it (the signs of three triple products: homogeneous rasterisation, Olano & Greer
  1997, so no clipping is needed). Neighbouring triangles evaluate their shared edge with
  exactly negated coefficients, so no pixel falls through a crack (inclusive test);
- depth is the ray's intersection with the triangle's plane (1/depth is linear in the pixel
  coordinates); the nearest wins, and on an exact tie the lower triangle index, so the result
  is deterministic in any thread count;
- back faces are culled (pieces are closed solids).

Rows are split in bands processed in parallel; every band walks the triangle list in order.
The kernels release the GIL, so the render stage's GL and writer threads run meanwhile.
"""

from __future__ import annotations

import os

# numba runs prange loops on OpenMP (GNU libgomp) threads, which spin for about 300,000 pauses
# (several ms) after each loop before they sleep. On a two-core machine that spinning takes the
# core from the GL and EXR threads running beside the raster: 5 % of the render stage's CPU at
# 2000 pieces (perf). 10,000 still bridges back-to-back loops. libgomp reads this when numba
# first loads it (the first parallel call); a value the user set is kept.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import numba as nb
import numpy as np

#: Value of the triangle buffer for the sky (nothing hit) and for the ground plane.
SKY = -1
GROUND = -2
#: Rows per parallel band.
BAND_ROWS = 8


@nb.njit(cache=True, nogil=True)
def _bands(row0, row1, height):
    """Items per band of rows: (start (n_bands + 1,), items), band ``b`` holding ``items[start[b]:
    start[b + 1]]``, in index order (so ties resolve as in one pass over all items). Item ``i``
    spans rows ``row0[i]..row1[i]``; an empty span (row0 > row1) is in no band. Each band then
    visits its own items instead of every item, which at 370 000 triangles was most of the fill."""
    n_bands = (height + BAND_ROWS - 1) // BAND_ROWS
    start = np.zeros(n_bands + 1, dtype=np.int64)
    n = row0.shape[0]
    for i in range(n):
        if row0[i] > row1[i]:
            continue
        for b in range(max(row0[i], 0) // BAND_ROWS, min(row1[i], height - 1) // BAND_ROWS + 1):
            start[b + 1] += 1
    for b in range(n_bands):
        start[b + 1] += start[b]
    items = np.empty(start[n_bands], dtype=np.int32)
    fill = start[:n_bands].copy()
    for i in range(n):
        if row0[i] > row1[i]:
            continue
        for b in range(max(row0[i], 0) // BAND_ROWS, min(row1[i], height - 1) // BAND_ROWS + 1):
            items[fill[b]] = i
            fill[b] += 1
    return start, items


@nb.njit(parallel=True, cache=True, nogil=True)
def transform_vertices(local, body, rot, pos, out):
    """out[v] = rot[body[v]] @ local[v] + pos[body[v]]  ((V, 3) f32; rot (B, 3, 3), pos (B, 3))."""
    for v in nb.prange(local.shape[0]):
        b = body[v]
        for i in range(3):
            out[v, i] = (
                rot[b, i, 0] * local[v, 0]
                + rot[b, i, 1] * local[v, 1]
                + rot[b, i, 2] * local[v, 2]
                + pos[b, i]
            )


@nb.njit(cache=True, nogil=True)
def _setup(verts, faces, cam_rot, cam_pos, fx, fy, cx, cy, width, height, near, coef, bbox):
    """Per triangle: 3 edge functions + 1/depth as A*px + B*py + C, and its pixel bbox.

    coef: (T, 4, 3) f64 rows (A, B, C) for edges 0..2 and 1/depth; bbox (T, 4) int32 x0, x1,
    y0, y1 inclusive (x0 > x1 when the triangle is culled).
    """
    T = faces.shape[0]
    a = np.empty(3)
    b = np.empty(3)
    c = np.empty(3)
    for t in range(T):
        bbox[t, 0] = 1
        bbox[t, 1] = 0
        bbox[t, 2] = 1
        bbox[t, 3] = 0
        vs = (a, b, c)
        for k in range(3):
            p = verts[faces[t, k]]
            d0 = p[0] - cam_pos[0]
            d1 = p[1] - cam_pos[1]
            d2 = p[2] - cam_pos[2]
            for i in range(3):
                vs[k][i] = cam_rot[0, i] * d0 + cam_rot[1, i] * d1 + cam_rot[2, i] * d2
        if -a[2] < near and -b[2] < near and -c[2] < near:
            continue
        # plane normal n = (b - a) x (c - a); front facing when n . a < 0 (camera at origin)
        e1x, e1y, e1z = b[0] - a[0], b[1] - a[1], b[2] - a[2]
        e2x, e2y, e2z = c[0] - a[0], c[1] - a[1], c[2] - a[2]
        nx = e1y * e2z - e1z * e2y
        ny = e1z * e2x - e1x * e2z
        nz = e1x * e2y - e1y * e2x
        k = nx * a[0] + ny * a[1] + nz * a[2]
        if k >= 0.0:
            continue  # back facing or edge-on
        # edge i between vs[i] and vs[i+1]: E = vs[i+1] x vs[i], inside when d . E >= 0 with
        # d = ((px + 0.5 - cx) / fx, -(py + 0.5 - cy) / fy, -1)
        for i in range(3):
            p = vs[i]
            q = vs[(i + 1) % 3]
            ex = q[1] * p[2] - q[2] * p[1]
            ey = q[2] * p[0] - q[0] * p[2]
            ez = q[0] * p[1] - q[1] * p[0]
            coef[t, i, 0] = ex / fx
            coef[t, i, 1] = -ey / fy
            coef[t, i, 2] = ex * (0.5 - cx) / fx - ey * (0.5 - cy) / fy - ez
        # 1/depth = (n . d) / k
        coef[t, 3, 0] = nx / fx / k
        coef[t, 3, 1] = -ny / fy / k
        coef[t, 3, 2] = (nx * (0.5 - cx) / fx - ny * (0.5 - cy) / fy - nz) / k
        if -a[2] >= near and -b[2] >= near and -c[2] >= near:
            umin = 1e30
            umax = -1e30
            vmin = 1e30
            vmax = -1e30
            for p in vs:
                u = cx + fx * p[0] / -p[2]
                v = cy - fy * p[1] / -p[2]
                umin = min(umin, u)
                umax = max(umax, u)
                vmin = min(vmin, v)
                vmax = max(vmax, v)
            x0 = max(int(np.ceil(umin - 0.5)), 0)
            x1 = min(int(np.floor(umax - 0.5)), width - 1)
            y0 = max(int(np.ceil(vmin - 0.5)), 0)
            y1 = min(int(np.floor(vmax - 0.5)), height - 1)
        else:  # crosses the near plane: test the whole screen (rare)
            x0, x1, y0, y1 = 0, width - 1, 0, height - 1
        bbox[t, 0] = x0
        bbox[t, 1] = x1
        bbox[t, 2] = y0
        bbox[t, 3] = y1


@nb.njit(parallel=True, cache=True, nogil=True)
def _fill(coef, bbox, start, items, near, tri, inv_depth):
    height, width = tri.shape
    inv_near = 1.0 / near
    n_bands = (height + BAND_ROWS - 1) // BAND_ROWS
    for band in nb.prange(n_bands):
        r0 = band * BAND_ROWS
        r1 = min(r0 + BAND_ROWS, height) - 1
        for y in range(r0, r1 + 1):
            for x in range(width):
                tri[y, x] = -1
                inv_depth[y, x] = 0.0
        for k in range(start[band], start[band + 1]):
            t = items[k]
            y0 = max(bbox[t, 2], r0)
            y1 = min(bbox[t, 3], r1)
            if y0 > y1:
                continue
            c = coef[t]
            for y in range(y0, y1 + 1):
                for x in range(bbox[t, 0], bbox[t, 1] + 1):
                    w0 = c[0, 0] * x + c[0, 1] * y + c[0, 2]
                    w1 = c[1, 0] * x + c[1, 1] * y + c[1, 2]
                    w2 = c[2, 0] * x + c[2, 1] * y + c[2, 2]
                    if w0 < 0.0 or w1 < 0.0 or w2 < 0.0:
                        continue
                    iz = c[3, 0] * x + c[3, 1] * y + c[3, 2]
                    if iz > inv_depth[y, x] and iz <= inv_near:
                        inv_depth[y, x] = iz
                        tri[y, x] = t


def rasterize(verts, faces, cam, *, near: float = 0.05):
    """Triangle index (h, w) int32 (``SKY`` where nothing) and depth (h, w) f32 (inf = none).

    verts: (V, 3) world; faces: (T, 3) int; cam: a :class:`destruct.camera.CameraFrame`.
    """
    T = len(faces)
    coef = np.zeros((T, 4, 3))
    bbox = np.zeros((T, 4), dtype=np.int32)
    if T:
        _setup(
            np.ascontiguousarray(verts, dtype=np.float64),
            np.ascontiguousarray(faces, dtype=np.int64),
            cam.rotation,
            cam.position,
            cam.fx,
            cam.fy,
            cam.cx,
            cam.cy,
            cam.width,
            cam.height,
            near,
            coef,
            bbox,
        )
    tri = np.empty((cam.height, cam.width), dtype=np.int32)
    inv = np.empty((cam.height, cam.width))
    # culled triangles (x0 > x1) get an empty row span too
    row1 = np.where(bbox[:, 0] > bbox[:, 1], -1, bbox[:, 3])
    start, items = _bands(bbox[:, 2], row1, cam.height)
    _fill(coef, bbox, start, items, near, tri, inv)
    with np.errstate(divide="ignore"):
        depth = (1.0 / inv).astype(np.float32)
    return tri, depth


@nb.njit(parallel=True, cache=True, nogil=True)
def _ground(tri, depth, rot, pos, fx, fy, cx, cy, half_size, gx, gz):
    h, w = tri.shape
    for y in nb.prange(h):
        dy = -(y + 0.5 - cy) / fy
        for x in range(w):
            dx = (x + 0.5 - cx) / fx
            # world direction of the ray with camera z = -1, so the hit's depth is t
            d0 = rot[0, 0] * dx + rot[0, 1] * dy - rot[0, 2]
            d1 = rot[1, 0] * dx + rot[1, 1] * dy - rot[1, 2]
            d2 = rot[2, 0] * dx + rot[2, 1] * dy - rot[2, 2]
            if d1 >= 0.0:
                continue
            t = -pos[1] / d1
            if t >= depth[y, x]:
                continue
            if abs(pos[0] + t * d0 - gx) <= half_size and abs(pos[2] + t * d2 - gz) <= half_size:
                tri[y, x] = GROUND
                depth[y, x] = t


def add_ground(
    tri: np.ndarray, depth: np.ndarray, cam, half_size: float, center=(0.0, 0.0)
) -> None:
    """Put the ground plane y = 0 (a square of ``half_size`` metres around ``center`` (x, z))
    into the buffers where it is nearer than what was drawn (in place, ``GROUND`` in ``tri``).
    A camera below the ground sees its back, which is not drawn."""
    if cam.position[1] <= 0.0:
        return
    _ground(
        tri,
        depth,
        cam.rotation,
        cam.position,
        cam.fx,
        cam.fy,
        cam.cx,
        cam.cy,
        half_size,
        center[0],
        center[1],
    )


@nb.njit(parallel=True, cache=True, nogil=True)
def _lookup(tri, normal_lut, class_lut, dust, dust_class, normal, seg, alpha):
    h, w = tri.shape
    for y in nb.prange(h):
        for x in range(w):
            t = tri[y, x] + 2  # GROUND -> 0, SKY -> 1, triangle i -> i + 2
            for c in range(3):
                normal[y, x, c] = normal_lut[t, c]
            a = dust[y, x]
            seg[y, x] = dust_class if a > 0.5 else class_lut[t]
            alpha[y, x] = 1.0 if t >= 2 else a  # the pieces; elsewhere the dust's coverage


def lookup_passes(tri, normal_lut, class_lut, dust, dust_class: int):
    """normal (h, w, 3) f32, seg (h, w) uint8 and alpha (h, w) f32 of a raster in one pass:
    each pixel's rows of ``normal_lut`` (T + 2, 3) and ``class_lut`` (T + 2,), indexed like
    ``tri`` + 2 (ground, sky, triangles); dust coverage over 0.5 is ``dust_class`` in seg, and
    alpha is 1 on the pieces, the dust coverage elsewhere."""
    h, w = tri.shape
    normal = np.empty((h, w, 3), dtype=np.float32)
    seg = np.empty((h, w), dtype=np.uint8)
    alpha = np.empty((h, w), dtype=np.float32)
    _lookup(
        tri,
        np.ascontiguousarray(normal_lut, dtype=np.float32),
        np.ascontiguousarray(class_lut, dtype=np.uint8),
        np.ascontiguousarray(dust, dtype=np.float32),
        dust_class,
        normal,
        seg,
        alpha,
    )
    return normal, seg, alpha


@nb.njit(cache=True, nogil=True)
def _project(p, rot, pos, fx, fy, cx, cy):
    d0 = p[0] - pos[0]
    d1 = p[1] - pos[1]
    d2 = p[2] - pos[2]
    x = rot[0, 0] * d0 + rot[1, 0] * d1 + rot[2, 0] * d2
    y = rot[0, 1] * d0 + rot[1, 1] * d1 + rot[2, 1] * d2
    z = rot[0, 2] * d0 + rot[1, 2] * d1 + rot[2, 2] * d2
    depth = -z
    if depth <= 0.0:
        return 0.0, 0.0, depth
    return cx + fx * x / depth, cy - fy * y / depth, depth


@nb.njit(parallel=True, cache=True, nogil=True)
def _motion(
    tri,
    depth,
    tri_body,
    cam0,
    intr0,
    body_rot0,
    body_pos0,
    cam1,
    intr1,
    body_rot1,
    body_pos1,
    body_ok1,
    ids0,
    ids1,
    depth1,
    check,
    rel_tol,
    motion,
    occl,
):
    """Per pixel: where its surface point lands in the other frame, and whether it is hidden.

    cam*: (4, 3) rows 0..2 rotation (camera -> world), row 3 position; intr*: fx, fy, cx, cy.
    Sky pixels move with the camera's rotation only (points at infinity); ground points are
    static; piece and rubble points follow their body's rigid transform. Points off the other
    frame's screen are occluded; ``check`` adds the test against the other frame's ids and
    depth.
    """
    h, w = tri.shape
    r0 = cam0[:3]
    p0 = cam0[3]
    r1 = cam1[:3]
    p1 = cam1[3]
    fx0, fy0, cx0, cy0 = intr0[0], intr0[1], intr0[2], intr0[3]
    fx1, fy1, cx1, cy1 = intr1[0], intr1[1], intr1[2], intr1[3]
    h1, w1 = h, w  # the other frame's size (the same camera resolution)
    if check:
        h1, w1 = ids1.shape
    for y in nb.prange(h):
        X = np.empty(3)
        L = np.empty(3)
        for x in range(w):
            t = tri[y, x]
            dx = (x + 0.5 - cx0) / fx0
            dy = -(y + 0.5 - cy0) / fy0
            # world direction of the pixel ray (z = -1 in camera space)
            for i in range(3):
                L[i] = r0[i, 0] * dx + r0[i, 1] * dy - r0[i, 2]
            hidden = False
            if t == -1:
                # point at infinity: direction only
                cz = r1[0, 2] * L[0] + r1[1, 2] * L[1] + r1[2, 2] * L[2]
                if cz >= 0.0:
                    motion[y, x, 0] = 0.0
                    motion[y, x, 1] = 0.0
                    occl[y, x] = 1.0
                    continue
                cxv = r1[0, 0] * L[0] + r1[1, 0] * L[1] + r1[2, 0] * L[2]
                cyv = r1[0, 1] * L[0] + r1[1, 1] * L[1] + r1[2, 1] * L[2]
                u = cx1 + fx1 * cxv / -cz
                v = cy1 - fy1 * cyv / -cz
                d1 = np.inf
            else:
                dd = depth[y, x]
                for i in range(3):
                    X[i] = p0[i] + dd * L[i]
                if t >= 0:
                    b = tri_body[t]
                    if not body_ok1[b]:
                        motion[y, x, 0] = 0.0
                        motion[y, x, 1] = 0.0
                        occl[y, x] = 1.0
                        continue
                    # local = R0^T (X - p0); X' = R1 local + p1
                    for i in range(3):
                        L[i] = (
                            body_rot0[b, 0, i] * (X[0] - body_pos0[b, 0])
                            + body_rot0[b, 1, i] * (X[1] - body_pos0[b, 1])
                            + body_rot0[b, 2, i] * (X[2] - body_pos0[b, 2])
                        )
                    for i in range(3):
                        X[i] = (
                            body_rot1[b, i, 0] * L[0]
                            + body_rot1[b, i, 1] * L[1]
                            + body_rot1[b, i, 2] * L[2]
                            + body_pos1[b, i]
                        )
                u, v, d1 = _project(X, r1, p1, fx1, fy1, cx1, cy1)
                if d1 <= 0.0:
                    motion[y, x, 0] = 0.0
                    motion[y, x, 1] = 0.0
                    occl[y, x] = 1.0
                    continue
            motion[y, x, 0] = u - (x + 0.5)
            motion[y, x, 1] = v - (y + 0.5)
            if u < 0.0 or v < 0.0 or u >= w1 or v >= h1:
                hidden = True
            elif check:
                iu = int(u)
                iv = int(v)
                if ids1[iv, iu] != ids0[y, x]:
                    hidden = True
                elif t == -1:
                    hidden = depth1[iv, iu] < np.inf
                elif depth1[iv, iu] < d1 * (1.0 - rel_tol):
                    hidden = True
            occl[y, x] = 1.0 if hidden else 0.0


def _cam_arrays(cam):
    c = np.empty((4, 3))
    c[:3] = cam.rotation
    c[3] = cam.position
    return c, np.array([cam.fx, cam.fy, cam.cx, cam.cy])


def motion_vectors(
    tri, depth, ids, tri_body, cam0, bodies0, cam1, bodies1, *, ids1=None, depth1=None, rel_tol=0.01
):
    """Exact per-pixel motion (h, w, 2) [px, x right y down] from frame 0 to frame 1, and
    occlusion (h, w) f32 (1 where the point is hidden or off-screen in frame 1).

    ``bodies*`` are (rot (B, 3, 3), pos (B, 3), ok (B,) bool) rigid transforms of every body
    (pieces, then rubble slots); a body missing in frame 1 (``ok`` False) is occluded with zero
    motion. Without ``ids1``/``depth1`` only screen exits are flagged. ``rel_tol`` is the share
    of depth by which frame 1's surface must be nearer to hide a point of the same id (only
    non-convex pieces hide their own points).
    """
    h, w = tri.shape
    motion = np.zeros((h, w, 2), dtype=np.float32)
    occl = np.zeros((h, w), dtype=np.float32)
    c0, i0 = _cam_arrays(cam0)
    c1, i1 = _cam_arrays(cam1)
    check = ids1 is not None
    if not check:
        ids1 = np.zeros((1, 1), dtype=np.uint32)
        depth1 = np.zeros((1, 1), dtype=np.float32)
    rot0, pos0, _ = bodies0
    rot1, pos1, ok1 = bodies1
    _motion(
        tri,
        depth,
        np.asarray(tri_body, dtype=np.int64),
        c0,
        i0,
        np.ascontiguousarray(rot0, dtype=np.float64),
        np.ascontiguousarray(pos0, dtype=np.float64),
        c1,
        i1,
        np.ascontiguousarray(rot1, dtype=np.float64),
        np.ascontiguousarray(pos1, dtype=np.float64),
        np.ascontiguousarray(ok1, dtype=np.bool_),
        ids,
        ids1,
        depth1,
        check,
        rel_tol,
        motion,
        occl,
    )
    return motion, occl


@nb.njit(parallel=True, cache=True, nogil=True)
def _splat(uv, depth, radius_px, alpha, row0, row1, start, items, scene_depth, out_t):
    """Multiply the transmittance out_t by (1 - a * gaussian) of each particle in front.

    The gaussian is separable, so a particle's column factors are computed once per band and
    each row's span inside the disc is found up front: the loop over a row's pixels has no
    branch and no exp, and LLVM vectorises it (1.5-2x faster than an exp and a disc test per
    pixel: 90 000 sprites at 1280x720 take 0.12-0.15 CPU s instead of 0.2-0.26)."""
    h, w = out_t.shape
    n_bands = (h + BAND_ROWS - 1) // BAND_ROWS
    for band in nb.prange(n_bands):
        r0 = band * BAND_ROWS
        r1 = min(r0 + BAND_ROWS, h) - 1
        gx = np.empty(w)  # this band's column factors of the current particle
        for k in range(start[band], start[band + 1]):
            i = items[k]
            r = radius_px[i]
            u, v, di = uv[i, 0], uv[i, 1], depth[i]
            y0 = max(row0[i], r0)
            y1 = min(row1[i], r1)
            if y0 > y1:
                continue
            x0 = max(int(u - r), 0)
            x1 = min(int(u + r), w - 1)
            k = -2.0 / (r * r)  # -1 / (2 sigma^2), sigma = r / 2
            for x in range(x0, x1 + 1):
                dx = x + 0.5 - u
                gx[x] = np.exp(k * dx * dx)
            for y in range(y0, y1 + 1):
                dy = y + 0.5 - v
                rest = r * r - dy * dy
                if rest < 0.0:
                    continue
                half = np.sqrt(rest)  # the disc's row: |x + 0.5 - u| <= half
                xa = max(x0, int(np.ceil(u - 0.5 - half)))
                xb = min(x1, int(np.floor(u - 0.5 + half)))
                if xb < xa:  # (a negative end would slice from the row's end)
                    continue
                a_row = alpha[i] * np.exp(k * dy * dy)
                # slices indexed from 0: no negative-index wraparound, so the loop vectorises
                t_seg, z_seg, g_seg = (
                    out_t[y, xa : xb + 1],
                    scene_depth[y, xa : xb + 1],
                    gx[xa : xb + 1],
                )
                for j in range(t_seg.shape[0]):
                    f = 1.0 - a_row * g_seg[j]
                    t_seg[j] *= f if z_seg[j] > di else 1.0


def dust_alpha(positions, radii, alphas, cam, scene_depth, *, max_radius_px: float = 64.0):
    """(h, w) f32 coverage of soft round dust sprites (gaussian, 2 sigma = radius), depth
    tested against ``scene_depth`` and composited front-to-back independent of order."""
    t = np.ones((cam.height, cam.width), dtype=np.float64)
    if len(positions):
        uv, d = cam.project(positions)
        front = d > 0.05
        r = np.where(
            front,
            np.minimum(np.asarray(radii) * cam.fx / np.where(front, d, 1.0), max_radius_px),
            0.0,
        )
        # each sprite's rows (clipped before the cast: no int overflow), for its bands and the kernel
        v = np.ascontiguousarray(uv[:, 1])
        row0 = np.trunc(np.clip(v - r, -1, cam.height)).astype(np.int64)
        row1 = np.where(r > 0, np.trunc(np.clip(v + r, -1, cam.height)), -2).astype(np.int64)
        start, items = _bands(row0, row1, cam.height)
        _splat(
            np.ascontiguousarray(uv),
            np.ascontiguousarray(d),
            np.ascontiguousarray(r, dtype=np.float64),
            np.ascontiguousarray(alphas, dtype=np.float64),
            row0,
            row1,
            start,
            items,
            scene_depth,
            t,
        )
    return (1.0 - t).astype(np.float32)

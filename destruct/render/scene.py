"""The merged mesh of all pieces and rubble, posed per frame with vectorised transforms.

Faces are de-indexed (three vertices of their own) so every triangle shades flat and keeps
its face normal, and ordered exterior faces, then interior (fracture) faces, then rubble, so
the GL render draws each group with one material in one call. Bodies are the pieces (index
``i``, id ``i + 1``) followed by the rubble slots (index ``P + rubble_id``, id
``P + 1 + rubble_id``, docs/FORMATS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from destruct.render.raster import transform_vertices


@dataclass
class Look:
    """How one material looks: scene-linear colours and its ADE20K class."""

    color: tuple[float, float, float]
    interior_color: tuple[float, float, float]
    ade20k: int


def material_looks(
    material_names: np.ndarray, overrides: dict[str, Any] | None = None
) -> list[Look]:
    """Looks of the run's materials; a shot-defined material takes its ``base`` preset's look."""
    from destruct.errors import UserError
    from destruct.materials import PRESETS

    looks = []
    for name in [str(n) for n in material_names]:
        preset = PRESETS.get(name)
        if preset is None:
            base = getattr((overrides or {}).get(name), "base", None)
            preset = PRESETS.get(base) if base else None
        if preset is None:
            raise UserError(
                f"fracture/pieces.npz uses material {name!r}, which is neither a preset ({', '.join(PRESETS)}) "
                "nor a [materials] entry with a base preset in the shot"
            )
        looks.append(Look(tuple(preset.color), tuple(preset.interior_color), int(preset.ade20k)))
    return looks


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(n, 4) quaternions wxyz (normalised here) -> (n, 3, 3) rotation matrices."""
    q = np.asarray(q, dtype=np.float64).reshape(-1, 4)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    m = np.empty((len(q), 3, 3))
    m[:, 0, 0] = 1 - 2 * (y * y + z * z)
    m[:, 0, 1] = 2 * (x * y - w * z)
    m[:, 0, 2] = 2 * (x * z + w * y)
    m[:, 1, 0] = 2 * (x * y + w * z)
    m[:, 1, 1] = 1 - 2 * (x * x + z * z)
    m[:, 1, 2] = 2 * (y * z - w * x)
    m[:, 2, 0] = 2 * (x * z - w * y)
    m[:, 2, 1] = 2 * (y * z + w * x)
    m[:, 2, 2] = 1 - 2 * (x * x + y * y)
    return m


def face_normals(tri: np.ndarray) -> np.ndarray:
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return (n / np.where(length > 0, length, 1.0)).astype(np.float32)


def _icosahedron() -> tuple[np.ndarray, np.ndarray]:
    """Unit icosahedron (12 vertices, 20 outward faces): the rubble bit's shape."""
    g = (1 + 5**0.5) / 2
    v = np.array(
        [
            [-1, g, 0],
            [1, g, 0],
            [-1, -g, 0],
            [1, -g, 0],
            [0, -1, g],
            [0, 1, g],
            [0, -1, -g],
            [0, 1, -g],
            [g, 0, -1],
            [g, 0, 1],
            [-g, 0, -1],
            [-g, 0, 1],
        ],
        dtype=np.float64,
    )
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    f = np.array(
        [
            [0, 11, 5],
            [0, 5, 1],
            [0, 1, 7],
            [0, 7, 10],
            [0, 10, 11],
            [1, 5, 9],
            [5, 11, 4],
            [11, 10, 2],
            [10, 7, 6],
            [7, 1, 8],
            [3, 9, 4],
            [3, 4, 2],
            [3, 2, 6],
            [3, 6, 8],
            [3, 8, 9],
            [4, 9, 5],
            [2, 4, 11],
            [6, 2, 10],
            [8, 6, 7],
            [9, 8, 1],
        ],
        dtype=np.int64,
    )
    return v, f


ROCK_VERTS, ROCK_FACES = _icosahedron()


@dataclass
class Bodies:
    """Rigid transforms of every body at one frame: rot (B, 3, 3), pos (B, 3), ok (B,) bool
    (False for rubble slots not alive in that frame), plus that frame's live rubble."""

    rot: np.ndarray
    pos: np.ndarray
    ok: np.ndarray
    rubble_id: np.ndarray
    rubble_radius: np.ndarray
    rubble_material: np.ndarray

    def as_tuple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.rot, self.pos, self.ok


def bodies_from_sim(frame: dict[str, np.ndarray], n_pieces: int, n_bodies: int) -> Bodies:
    """Transforms of pieces and rubble slots from one sim frame (docs/FORMATS.md keys)."""
    rot = np.tile(np.eye(3), (n_bodies, 1, 1))
    pos = np.zeros((n_bodies, 3))
    ok = np.zeros(n_bodies, dtype=bool)
    rot[:n_pieces] = quat_to_matrix(frame["rotation"])
    pos[:n_pieces] = frame["position"]
    ok[:n_pieces] = True
    rid = np.asarray(frame.get("rubble_id", np.zeros(0, np.int32)), dtype=np.int64)
    if len(rid):
        slots = n_pieces + rid
        rot[slots] = quat_to_matrix(frame["rubble_rotation"])
        pos[slots] = frame["rubble_position"]
        ok[slots] = True
    return Bodies(
        rot,
        pos,
        ok,
        rid,
        np.asarray(frame.get("rubble_radius", np.zeros(0)), dtype=np.float64),
        np.asarray(frame.get("rubble_material", np.zeros(0, np.int32)), dtype=np.int64),
    )


@dataclass
class FrameMesh:
    """One frame's merged, de-indexed mesh: ``verts`` (3T, 3) f32 world, triangle ``t`` is
    rows 3t..3t+2; per triangle its world normal (T, 3), body (T,), colour (T, 3) and ADE20K
    class (T,); ``groups`` are (start, end) triangle ranges: exterior, interior, rubble."""

    verts: np.ndarray
    normals: np.ndarray
    tri_body: np.ndarray
    tri_color: np.ndarray
    tri_class: np.ndarray
    groups: tuple[tuple[int, int], ...]
    #: the rubble as instances of one rock for the GL beauty: (R, 4, 4) f32 world matrices
    #: (rotation times radius, position) and (R,) colour rows into ``rubble_colors`` (R, 3)
    rubble_poses: np.ndarray | None = None
    rubble_colors: np.ndarray | None = None

    @property
    def faces(self) -> np.ndarray:
        return np.arange(len(self.verts), dtype=np.int64).reshape(-1, 3)


class PieceMesh:
    """The static part of the merged mesh (pieces in their local frames), built once."""

    def __init__(self, pieces: dict[str, np.ndarray], looks: list[Look]):
        P = len(pieces["names"])
        self.n_pieces = P
        self.names = [str(n) for n in pieces["names"]]
        voff = np.asarray(pieces["vert_offset"], dtype=np.int64)
        foff = np.asarray(pieces["face_offset"], dtype=np.int64)
        faces = np.asarray(pieces["faces"], dtype=np.int64)
        piece_of_face = np.repeat(np.arange(P), np.diff(foff))
        gfaces = faces + voff[piece_of_face][:, None]  # global vertex indices
        interior = np.asarray(pieces["face_interior"], dtype=bool)
        order = np.concatenate([np.flatnonzero(~interior), np.flatnonzero(interior)])
        gfaces, piece_of_face, interior = gfaces[order], piece_of_face[order], interior[order]
        verts = np.asarray(pieces["vertices"], dtype=np.float32)
        self.local = np.ascontiguousarray(verts[gfaces].reshape(-1, 3))
        self.local_normals = face_normals(verts[gfaces].astype(np.float64))
        self.tri_body = piece_of_face
        self.vert_body = np.repeat(piece_of_face, 3)
        mat = np.asarray(pieces["material"], dtype=np.int64)[piece_of_face]
        col = np.array([lk.color for lk in looks], dtype=np.float32).reshape(-1, 3)
        icol = np.array([lk.interior_color for lk in looks], dtype=np.float32).reshape(-1, 3)
        self.look_class = np.array([lk.ade20k for lk in looks], dtype=np.int64)
        self.rubble_color = icol
        self.tri_color = np.where(interior[:, None], icol[mat], col[mat])
        self.tri_class = self.look_class[mat]
        n_ext = int((~interior).sum())
        self.groups = ((0, n_ext), (n_ext, len(gfaces)))
        # bounding radius of each piece around its centre of mass (for the scene's bounds)
        r = np.linalg.norm(verts, axis=1)
        self.radius = np.zeros(P)
        np.maximum.at(self.radius, np.repeat(np.arange(P), np.diff(voff)), r)

    def pose(self, bodies: Bodies) -> FrameMesh:
        """The merged mesh at one frame (pieces plus that frame's live rubble)."""
        T = len(self.tri_body)
        R = len(bodies.rubble_id)
        nf = len(ROCK_FACES)
        verts = np.empty(((T + R * nf) * 3, 3), dtype=np.float32)
        normals = np.empty((T + R * nf, 3), dtype=np.float32)
        transform_vertices(self.local, self.vert_body, bodies.rot, bodies.pos, verts[: 3 * T])
        transform_vertices(
            self.local_normals, self.tri_body, bodies.rot, np.zeros_like(bodies.pos), normals[:T]
        )
        tri_body, tri_color, tri_class = self.tri_body, self.tri_color, self.tri_class
        if R:
            rock = ROCK_VERTS[ROCK_FACES].reshape(-1, 3)  # (nf * 3, 3)
            local = (
                (bodies.rubble_radius[:, None, None] * rock[None]).reshape(-1, 3).astype(np.float32)
            )
            slots = self.n_pieces + bodies.rubble_id
            vb = np.repeat(slots, nf * 3)
            transform_vertices(local, vb, bodies.rot, bodies.pos, verts[3 * T :])
            rock_n = face_normals(ROCK_VERTS[ROCK_FACES])
            transform_vertices(
                np.tile(rock_n, (R, 1)),
                np.repeat(slots, nf),
                bodies.rot,
                np.zeros_like(bodies.pos),
                normals[T:],
            )
            mat = bodies.rubble_material
            tri_body = np.concatenate([tri_body, np.repeat(slots, nf)])
            tri_color = np.concatenate([tri_color, np.repeat(self.rubble_color[mat], nf, axis=0)])
            tri_class = np.concatenate([tri_class, np.repeat(self.look_class[mat], nf)])
            poses = np.zeros((R, 4, 4), dtype=np.float32)
            poses[:, :3, :3] = bodies.rot[slots] * bodies.rubble_radius[:, None, None]
            poses[:, :3, 3] = bodies.pos[slots]
            poses[:, 3, 3] = 1.0
            rubble = {"rubble_poses": poses, "rubble_colors": self.rubble_color[mat]}
        else:
            rubble = {}
        groups = self.groups + ((T, T + R * nf),)
        return FrameMesh(verts, normals, tri_body, tri_color, tri_class, groups, **rubble)

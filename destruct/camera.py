"""The shot camera: pinhole intrinsics from millimetres, keyframes, and charge-driven shake.

numpy only. Camera space is OpenGL's (x right, y up, z towards the viewer, the camera looks
down -z); image pixels are x right, y down, and pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``,
so its centre is at ``(i + 0.5, j + 0.5)`` and the image centre at ``(width / 2, height / 2)``.
Depth is metres along the view axis (``-z`` in camera space).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Seconds a charge's shake takes to decay by e (the rise takes ``SHAKE_RISE``).
SHAKE_DECAY = 0.6
SHAKE_RISE = 0.03
#: Distance [m] at which a charge's shake falls to half its strength.
SHAKE_DISTANCE = 30.0
#: Frequencies [Hz] of the shake noise per world axis (incommensurate, so no visible loop).
_SHAKE_FREQS = np.array([[5.3, 8.9, 13.7], [6.1, 9.7, 12.3], [4.7, 7.9, 15.1]])
_SHAKE_PHASES = np.array([[0.3, 2.1, 4.4], [1.7, 5.2, 0.9], [3.3, 0.6, 2.8]])


@dataclass
class CameraFrame:
    """The camera at one frame.

    position: (3,) world [m]; rotation: (3, 3) camera -> world, columns are the camera's x
    (right), y (up) and z (towards the viewer) axes in world space; focal_mm and sensor_mm
    (sensor width) in millimetres; width and height in pixels.
    """

    position: np.ndarray
    rotation: np.ndarray
    focal_mm: float
    sensor_mm: float
    width: int
    height: int

    def __post_init__(self) -> None:
        self.position = np.asarray(self.position, dtype=np.float64).reshape(3)
        self.rotation = np.asarray(self.rotation, dtype=np.float64).reshape(3, 3)

    @property
    def fx(self) -> float:
        """Focal length in pixels (the sensor width spans the image width)."""
        return float(self.focal_mm) / float(self.sensor_mm) * self.width

    @property
    def fy(self) -> float:
        """Square pixels: the same as :attr:`fx`."""
        return self.fx

    @property
    def cx(self) -> float:
        return self.width / 2.0

    @property
    def cy(self) -> float:
        return self.height / 2.0

    def view_matrix(self) -> np.ndarray:
        """(4, 4) world -> camera."""
        m = np.eye(4)
        m[:3, :3] = self.rotation.T
        m[:3, 3] = -self.rotation.T @ self.position
        return m

    def pose(self) -> np.ndarray:
        """(4, 4) camera -> world (the pose a pyrender camera node takes)."""
        m = np.eye(4)
        m[:3, :3] = self.rotation
        m[:3, 3] = self.position
        return m

    def projection(self, near: float, far: float) -> np.ndarray:
        """(4, 4) OpenGL projection matching :meth:`project` (same as pyrender's
        ``IntrinsicsCamera(fx, fy, cx, cy)``)."""
        w, h = self.width, self.height
        p = np.zeros((4, 4))
        p[0, 0] = 2.0 * self.fx / w
        p[1, 1] = 2.0 * self.fy / h
        p[0, 2] = 1.0 - 2.0 * self.cx / w
        p[1, 2] = 2.0 * self.cy / h - 1.0
        p[2, 2] = -(far + near) / (far - near)
        p[2, 3] = -2.0 * far * near / (far - near)
        p[3, 2] = -1.0
        return p

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """(n, 3) world points -> (n, 3) camera-space points."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return (pts - self.position) @ self.rotation

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, 3) world points -> (uv (n, 2) pixels x right y down, depth (n,) metres along the
        view axis). Points behind the camera get a negative depth (their uv is meaningless)."""
        c = self.to_camera(points)
        depth = -c[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.cx + self.fx * c[:, 0] / depth
            v = self.cy - self.fy * c[:, 1] / depth
        return np.stack([u, v], axis=1), depth


def look_at_rotation(
    position: Sequence[float], target: Sequence[float], up: Sequence[float] = (0, 1, 0)
) -> np.ndarray:
    """(3, 3) camera -> world rotation of a camera at ``position`` looking at ``target``.

    The camera's x axis stays horizontal (perpendicular to ``up``); looking straight along
    ``up`` falls back to world -z as the image's up direction.
    """
    p = np.asarray(position, dtype=np.float64)
    z = p - np.asarray(target, dtype=np.float64)
    n = np.linalg.norm(z)
    if n == 0.0:
        raise ValueError("camera look_at equals its position; they must differ")
    z /= n
    u = np.asarray(up, dtype=np.float64)
    x = np.cross(u, z)
    if np.linalg.norm(x) < 1e-9:
        x = np.cross(np.array([0.0, 0.0, -1.0]), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def _get(obj: Any, name: str) -> Any:
    """A field of a pydantic model or of a plain dict (None when absent)."""
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _hermite(frames: np.ndarray, values: np.ndarray, f: float) -> np.ndarray:
    """Catmull-Rom style cubic Hermite through (frames, values), clamped outside the keys.

    Tangents are central differences over the neighbouring keys (one-sided at the ends), so a
    key sequence on a straight line at constant spacing gives constant speed.
    """
    n = len(frames)
    if n == 1 or f <= frames[0]:
        return values[0]
    if f >= frames[-1]:
        return values[-1]
    k = int(np.searchsorted(frames, f, side="right") - 1)
    t0, t1 = frames[k], frames[k + 1]

    def tangent(i: int) -> np.ndarray:
        a, b = max(i - 1, 0), min(i + 1, n - 1)
        return (values[b] - values[a]) / (frames[b] - frames[a])

    h = t1 - t0
    s = (f - t0) / h
    h00 = 2 * s**3 - 3 * s**2 + 1
    h10 = s**3 - 2 * s**2 + s
    h01 = -2 * s**3 + 3 * s**2
    h11 = s**3 - s**2
    return h00 * values[k] + h10 * h * tangent(k) + h01 * values[k + 1] + h11 * h * tangent(k + 1)


def shake_events(
    charges: Iterable[Any], camera_position: Sequence[float]
) -> list[tuple[float, float]]:
    """(time [s], weight 0..1) per charge: the strongest charge weighs 1 at the camera, and the
    weight halves at :data:`SHAKE_DISTANCE` metres (``1 / (1 + (d / SHAKE_DISTANCE)^2)``)."""
    charges = list(charges)
    if not charges:
        return []
    cam = np.asarray(camera_position, dtype=np.float64)
    peak = max(float(_get(c, "impulse") or 0.0) for c in charges) or 1.0
    events = []
    for c in charges:
        d = float(np.linalg.norm(np.asarray(_get(c, "position"), dtype=np.float64) - cam))
        w = float(_get(c, "impulse") or 0.0) / peak / (1.0 + (d / SHAKE_DISTANCE) ** 2)
        events.append((float(_get(c, "time")), w))
    return events


def shake_offsets(
    t: float, amplitude_m: float, events: Iterable[tuple[float, float]]
) -> np.ndarray:
    """(2, 3) world offsets [m] of the camera position (row 0) and of its look_at (row 1) at
    shot time ``t``.

    Each event contributes a fast rise and an exponential decay; the noise is a fixed sum of
    sines per axis (different for the two rows, so the shake both moves and turns the
    camera), so the same frame always shakes the same way and farm chunks agree.
    """
    env = 0.0
    for t0, w in events:
        dt = t - t0
        if dt > 0.0:
            env += w * (1.0 - math.exp(-dt / SHAKE_RISE)) * math.exp(-dt / SHAKE_DECAY)
    if env == 0.0 or amplitude_m == 0.0:
        return np.zeros((2, 3))
    phase = 2 * np.pi * _SHAKE_FREQS * t
    noise = np.stack(
        [np.sin(phase + _SHAKE_PHASES).sum(axis=1), np.cos(phase + 2.0 * _SHAKE_PHASES).sum(axis=1)]
    )
    return amplitude_m * min(env, 1.0) * noise / 3.0


def camera_at(
    cam: Any,
    frame: int,
    start_frame: int,
    fps: float,
    shake_events: Iterable[tuple[float, float]] = (),
) -> CameraFrame:
    """The shot's ``[camera]`` at an absolute ``frame``.

    ``cam`` has position, look_at, focal_mm, sensor_mm, resolution [w, h], keys (each with an
    absolute ``frame`` and any of position, look_at, focal_mm; missing values fall back to the
    camera's own) and shake (peak amplitude [m]). Keys are interpolated with a cubic Hermite
    (Catmull-Rom tangents); shake jitters the position and the look_at point independently
    (so the camera both moves and turns), driven by ``shake_events`` ((shot time [s], weight)
    pairs, see :func:`shake_events`).
    """
    position = np.asarray(_get(cam, "position"), dtype=np.float64)
    look_at = np.asarray(_get(cam, "look_at"), dtype=np.float64)
    focal = float(_get(cam, "focal_mm") or 35.0)
    keys = sorted(_get(cam, "keys") or [], key=lambda k: float(_get(k, "frame")))
    if keys:
        kf = np.array([float(_get(k, "frame")) for k in keys])

        def channel(name: str, default: np.ndarray | float) -> np.ndarray:
            vals = [default if _get(k, name) is None else _get(k, name) for k in keys]
            return np.asarray(vals, dtype=np.float64)

        position = _hermite(kf, channel("position", position), float(frame))
        look_at = _hermite(kf, channel("look_at", look_at), float(frame))
        focal = float(_hermite(kf, channel("focal_mm", focal), float(frame)))
    amplitude = float(_get(cam, "shake") or 0.0)
    events = list(shake_events)
    if amplitude and events:
        offsets = shake_offsets((frame - start_frame) / float(fps), amplitude, events)
        position, look_at = position + offsets[0], look_at + offsets[1]
    rotation = look_at_rotation(position, look_at)
    width, height = (int(v) for v in _get(cam, "resolution"))
    return CameraFrame(
        position, rotation, focal, float(_get(cam, "sensor_mm") or 36.0), width, height
    )

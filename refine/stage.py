"""The ``refine`` stage: passes/ -> refine/<shot>.<f:04d>.png (DESIGN.md section 8).

A thin adapter between the run directory and :mod:`refine.temporal`: it reads each frame's EXR
(beauty, depth, normals, motion, back, occlusion) and seg PNG, makes the control images as
floats (:mod:`refine.conditioning`), refines the windows that hold this invocation's frames,
cross-fades the overlaps and writes the frames atomically, recording each one as it lands.

Windows are planned over the whole shot, so farm chunks (``--frames``) agree on them. Each
finished window is cached in ``refine/.windows/`` (float16, keyed by the refine settings and
the EXRs it read), so a killed run resumes at the last window and the neighbouring chunk
reuses a window it shares. With a background plate, the refined image is used inside the
beauty's alpha and the plate is kept exactly outside it.

Figures: warping error (exact motion and occlusion, sRGB 0..1, see :mod:`refine.metrics`) of
the coarse beauty and of the refined frames, and on a short probe (the first
``PROBE_FRAMES`` frames of the invocation) of both the per-frame and the temporal method.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from destruct.errors import StageSkipped, UserError
from destruct.io import load_json, load_npz, save_npz, save_png

WINDOW_FORMAT = "destruct.refinewindow/1"
#: EXR channels refine reads (DESIGN.md section 3).
REQUIRED_CHANNELS = ("R", "G", "B", "A", "depth.Z", "N.X", "N.Y", "N.Z")
REQUIRED_CHANNELS += ("motion.X", "motion.Y", "back.X", "back.Y", "occlusion.Y")
#: Frames refined a second time with the other method (per-frame vs temporal) for the figures.
PROBE_FRAMES = 4


def _linear_to_srgb(c: np.ndarray) -> np.ndarray:
    from destruct.render.passes import linear_to_srgb

    return linear_to_srgb(c)


class PassReader:
    """Reads one frame's passes into a :class:`refine.temporal.FrameInput` (+ alpha)."""

    def __init__(self, run_dir: Path, shot_name: str, kinds: Sequence[str]):
        self.dir = Path(run_dir) / "passes"
        self.name = shot_name
        self.kinds = list(kinds)
        self.near = self.far = None
        if "depth" in self.kinds:
            rng = load_json(self.dir / "depth_range.json", "destruct.depthrange/1")
            self.near, self.far = float(rng["near"]), float(rng["far"])

    def exr_path(self, frame: int) -> Path:
        return self.dir / f"{self.name}.{frame:04d}.exr"

    def read(self, frame: int) -> tuple[Any, np.ndarray]:
        """``(FrameInput, alpha (h, w))`` of one frame."""
        from destruct.render.exr import read_exr
        from refine.conditioning import depth_to_control, normal_to_control, seg_to_control
        from refine.temporal import FrameInput

        ch = read_exr(self.exr_path(frame))
        need = REQUIRED_CHANNELS
        missing = [c for c in need if c not in ch]
        if missing:
            raise UserError(
                f"{self.exr_path(frame)} lacks {', '.join(missing)}; refine needs render.passes to include "
                "beauty, depth, normal, motion and occlusion (re-run render with --force)"
            )
        f32 = {k: np.asarray(v, np.float32) for k, v in ch.items() if k != "id"}
        beauty = _linear_to_srgb(np.stack([f32["R"], f32["G"], f32["B"]], -1))
        depth = f32["depth.Z"]
        controls = []
        for kind in self.kinds:
            if kind == "depth":
                controls.append(depth_to_control(depth, self.near, self.far))
            elif kind == "normal":
                n = np.stack([f32["N.X"], f32["N.Y"], f32["N.Z"]], -1)
                controls.append(normal_to_control(n, np.isfinite(depth)))
            else:
                controls.append(seg_to_control(self._seg_classes(frame)))
        fr = FrameInput(
            frame=frame,
            beauty=beauty,
            controls=controls,
            motion=np.stack([f32["motion.X"], f32["motion.Y"]], -1),
            back=np.stack([f32["back.X"], f32["back.Y"]], -1),
            occlusion=f32["occlusion.Y"],
        )
        return fr, np.clip(f32["A"], 0.0, 1.0)

    def _seg_classes(self, frame: int) -> np.ndarray:
        """ADE20K class per pixel from the seg PNG (palette colours, nearest-neighbour exact)."""
        from destruct.io import read_image
        from refine.conditioning import ADE20K_PALETTE

        path = self.dir / "seg" / f"{self.name}.{frame:04d}.png"
        if not path.is_file():
            raise UserError(
                f"{path} is missing: a seg ControlNet needs render.png = true and 'seg' in render.passes"
            )
        rgb = read_image(path, "re-run render with --force")[..., :3].astype(np.int32)
        key = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        pal = ADE20K_PALETTE.astype(np.int32)
        pal_key = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
        order = np.argsort(pal_key)
        idx = np.clip(np.searchsorted(pal_key[order], key), 0, len(order) - 1)
        classes = order[idx]
        if np.any(pal_key[classes] != key):
            raise UserError(
                f"{path} holds colours outside the ADE20K palette; re-run render with --force"
            )
        return classes

    def fingerprint(self, frames: Sequence[int]) -> list[tuple[int, str]]:
        """(frame, sha256 of its EXR): a re-rendered frame invalidates a cached window. By
        content, not mtime, so identical runs write identical window caches."""
        return [(f, hashlib.sha256(self.exr_path(f).read_bytes()).hexdigest()) for f in frames]


class _LazyFrames(Sequence):
    """The frames of one window, read when first used, keeping only the last two in memory."""

    def __init__(self, reader: PassReader, frames: Sequence[int]):
        self.reader = reader
        self.frames = list(frames)
        self.cache: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        if i not in self.cache:
            self.cache[i] = self.reader.read(self.frames[i])[0]
            for k in [k for k in self.cache if k < i - 1]:
                del self.cache[k]
        return self.cache[i]


def _window_key(refine: Any, seed: int, fingerprint: list) -> str:
    blob = json.dumps(
        {"refine": refine.model_dump(mode="json"), "seed": seed, "passes": fingerprint},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _composite(image: np.ndarray, alpha: np.ndarray, plate_srgb: np.ndarray | None) -> np.ndarray:
    """Refined inside ``alpha``, the plate exactly outside it (no plate: the image)."""
    if plate_srgb is None:
        return image
    a = alpha[..., None]
    return np.where(a > 0, image * a + plate_srgb * (1 - a), plate_srgb)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    from refine.conditioning import to_uint8

    return to_uint8(img)


def _temporal_settings(shot: Any) -> Any:
    from refine.temporal import TemporalSettings

    t = shot.refine.temporal
    return TemporalSettings(t.noise_warp, t.cross_frame, t.fusion, t.window, t.overlap)


def shot_windows(shot: Any) -> list[tuple[int, ...]]:
    """The shot's windows, planned over all its frames so farm chunks agree."""
    from refine.temporal import plan_for

    return plan_for(shot.frame_numbers(), _temporal_settings(shot))


class WindowRefiner:
    """One shot's loaded pipeline and window plan: refines windows into the cache
    ``refine/.windows/<shot>.<first>-<last>.npz``. In-process for the stage, or one per GPU as
    a Ray actor (:mod:`refine.farm`). Raises ``refine.models.MissingWeights``."""

    def __init__(self, shot: Any, run_dir: str | Path, *, force: bool = False):
        from refine.pipeline import ControlKind, ControlSpec, load_pipeline
        from refine.temporal import (
            RefineSettings,
            install_cross_frame,
        )

        r = shot.refine
        self.shot, self.run_dir, self.force = shot, Path(run_dir), force
        specs = [ControlSpec(ControlKind(c.kind), c.model, float(c.scale)) for c in r.controlnets]
        self.rp = load_pipeline(
            r.model,
            specs,
            device=getattr(r, "device", "auto"),
            cpu_offload=bool(getattr(r, "cpu_offload", False)),
            vae_tiling=bool(getattr(r, "vae_tiling", False)),
        )
        self.state = install_cross_frame(self.rp.pipe)
        self.temporal = _temporal_settings(shot)
        self.settings = RefineSettings(
            r.prompt, r.negative_prompt, r.steps, r.strength, r.guidance, int(shot.shot.seed)
        )
        self.reader = PassReader(self.run_dir, shot.shot.name, [s.kind.value for s in specs])
        self.windows = shot_windows(shot)

    def cache_path(self, index: int) -> Path:
        win = self.windows[index]
        name = f"{self.shot.shot.name}.{win[0]:04d}-{win[-1]:04d}.npz"
        return self.run_dir / "refine" / ".windows" / name

    def images(self, index: int) -> dict[int, np.ndarray]:
        """Window ``index``'s refined frames, from the cache when its key matches, else
        refined now and cached."""
        from refine.temporal import refine_window

        win = self.windows[index]
        cache = self.cache_path(index)
        key = _window_key(self.shot.refine, self.settings.seed, self.reader.fingerprint(win))
        if cache.is_file() and not self.force:
            try:
                d = load_npz(cache, WINDOW_FORMAT)
                if str(d["key"]) == key:
                    return {
                        int(f): im.astype(np.float32) for f, im in zip(d["frames"], d["images"])
                    }
            except UserError:
                pass  # unreadable or old cache: refine again
        frames = _LazyFrames(self.reader, win)
        # rounded to the cache's float16 also when fresh, so a resumed run writes the same bytes
        imgs = [
            im.astype(np.float16)
            for im in refine_window(self.rp, frames, self.settings, self.temporal, self.state)
        ]
        save_npz(
            cache,
            WINDOW_FORMAT,
            key=np.array(key),
            frames=np.array(win, np.int64),
            images=np.stack(imgs),
        )
        return {f: im.astype(np.float32) for f, im in zip(win, imgs)}

    def refine(self, index: int) -> str:
        """Make sure window ``index`` is cached; returns the cache path (for farm tasks)."""
        self.images(index)
        return str(self.cache_path(index))


def run_refine(ctx: Any) -> dict[str, Any]:
    """Refine ``ctx.frames_todo()``; figures for the manifest. Raises StageSkipped without weights."""
    shot = ctx.shot
    if not shot.refine.enabled:
        raise StageSkipped("refine.enabled = false in the shot")
    todo = ctx.frames_todo()
    figures: dict[str, Any] = {"frames_refined": 0}
    if not todo:
        return figures
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        raise StageSkipped("no diffusion libraries: pip install 'destruct[refine]'") from None

    from refine.models import MissingWeights
    from refine.temporal import blend_weights, crossfade, windows_for

    try:
        wr = WindowRefiner(shot, ctx.run_dir, force=ctx.force)
    except MissingWeights as e:
        raise StageSkipped(f"no weights: {e.command}") from None
    weights = blend_weights(wr.windows)
    needed = windows_for(todo, wr.windows)
    figures.update(
        family=wr.rp.family.value,
        device=str(wr.rp.device),
        windows=len(needed),
        method="temporal" if wr.temporal.any else "per_frame",
    )

    outputs: dict[int, dict[int, np.ndarray]] = {}
    todo_set, emitted = set(todo), set()
    metric = _PairErrors()
    t0 = time.perf_counter()
    with ctx.progress(len(todo), "refine") as bar:
        for wi in needed:
            win = wr.windows[wi]
            outputs[wi] = wr.images(wi)
            ready = sorted(
                f
                for f in todo_set - emitted
                if all(w in outputs for w, _ in weights[f]) and f in win
            )
            for f in ready:
                img = crossfade(outputs, weights, f)
                fr, alpha = wr.reader.read(f)
                plate = _plate_srgb(shot, f, img.shape[1], img.shape[0])
                final = _composite(img, alpha, plate)
                save_png(ctx.path("refine", f"{shot.shot.name}.{f:04d}.png"), _to_uint8(final))
                ctx.frame_done(f)
                metric.add(f, fr.beauty, final, fr.motion, fr.occlusion)
                emitted.add(f)
                figures["frames_refined"] += 1
                bar.advance()
            for w in [w for w in outputs if w != wi]:
                del outputs[w]
    figures["seconds_per_frame"] = round(
        (time.perf_counter() - t0) / max(figures["frames_refined"], 1), 3
    )
    figures["warping_error_coarse"] = metric.coarse()
    figures[f"warping_error_{figures['method']}"] = metric.refined()
    probe = [f for f in sorted(todo)[:PROBE_FRAMES]]
    if len(probe) >= 2 and probe[-1] - probe[0] == len(probe) - 1:
        figures["probe"] = _probe(wr, probe)
    return figures


def _plate_srgb(shot: Any, frame: int, width: int, height: int) -> np.ndarray | None:
    if not shot.render.plate:
        return None
    from destruct.render import load_plate

    return _linear_to_srgb(load_plate(shot.render.plate, frame, width, height))


class _PairErrors:
    """Warping error accumulated over consecutive frames as they are written."""

    def __init__(self):
        self.prev: tuple | None = None
        self.errs_coarse: list[float] = []
        self.errs_refined: list[float] = []

    def add(
        self,
        frame: int,
        coarse: np.ndarray,
        refined: np.ndarray,
        motion: np.ndarray,
        occlusion: np.ndarray,
    ) -> None:
        from refine.metrics import pair_error

        if self.prev is not None and self.prev[0] == frame - 1:
            _, c0, r0, m0, o0 = self.prev
            self.errs_coarse.append(pair_error(c0, coarse, m0, o0))
            self.errs_refined.append(pair_error(r0, refined, m0, o0))
        self.prev = (frame, coarse, refined, motion, occlusion)

    @staticmethod
    def _mean(errs: list[float]) -> float | None:
        errs = [e for e in errs if not np.isnan(e)]
        return round(float(np.mean(errs)), 6) if errs else None

    def coarse(self) -> float | None:
        return self._mean(self.errs_coarse)

    def refined(self) -> float | None:
        return self._mean(self.errs_refined)


def _probe(wr: WindowRefiner, frames: list[int]) -> dict[str, Any]:
    """Coarse, per-frame and temporal warping error on a few consecutive frames (one fresh window)."""
    from refine.metrics import warping_error
    from refine.temporal import TemporalSettings, refine_window

    temporal = wr.temporal
    inputs = [wr.reader.read(f)[0] for f in frames]
    mot, occ = [f.motion for f in inputs], [f.occlusion for f in inputs]
    off = TemporalSettings(False, False, False, temporal.window, temporal.overlap)
    on = (
        temporal
        if temporal.any
        else TemporalSettings(window=temporal.window, overlap=temporal.overlap)
    )
    per_frame = refine_window(wr.rp, inputs, wr.settings, off, wr.state)
    temp = refine_window(wr.rp, inputs, wr.settings, on, wr.state)
    return {
        "frames": len(frames),
        "coarse": round(warping_error([f.beauty for f in inputs], mot, occ), 6),
        "per_frame": round(warping_error(per_frame, mot, occ), 6),
        "temporal": round(warping_error(temp, mot, occ), 6),
    }

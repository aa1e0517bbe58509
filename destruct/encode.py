"""The ``encode`` stage: passes/, refine/ and sim/ -> preview.mp4, refined.mp4, overview.png,
sim_stats.png (DESIGN.md section 2).

Videos are H.264, yuv420p, sRGB, with the size padded to even numbers (yuv420p needs it),
streamed frame by frame through ffmpeg (imageio-ffmpeg) into a temp name and renamed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from destruct.errors import StageSkipped, UserError
from destruct.io import load_npz, temp_prefix
from destruct.render import SIM_FORMAT

#: the fix for a pass file that does not read
RERENDER = "re-render it: destruct run SHOT --stages render --force"


def _read_rgb(path: Path) -> np.ndarray:
    from destruct.io import read_image

    img = read_image(path, RERENDER)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return img[..., :3].astype(np.uint8)


def _beauty_frame(run_dir: Path, name: str, frame: int) -> np.ndarray | None:
    """The sRGB beauty of a frame: its PNG, else the EXR's R, G, B."""
    png = run_dir / "passes" / "beauty" / f"{name}.{frame:04d}.png"
    if png.is_file():
        return _read_rgb(png)
    exr = run_dir / "passes" / f"{name}.{frame:04d}.exr"
    if exr.is_file():
        from destruct.render.exr import read_exr
        from destruct.render.passes import linear_to_u8

        d = read_exr(exr)
        if "R" in d:
            return linear_to_u8(np.stack([d[c] for c in "RGB"], axis=-1).astype(np.float32))
    return None


def write_mp4(path: str | os.PathLike, frames, fps: float) -> int:
    """Encode an iterable of (h, w, 3) uint8 sRGB frames; returns the frame count. Atomic."""
    import imageio_ffmpeg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.stem), suffix=".mp4", dir=path.parent)
    os.close(fd)
    writer = None
    n = 0
    try:
        for img in frames:
            h, w = img.shape[:2]
            if writer is None:
                size = (w + w % 2, h + h % 2)
                writer = imageio_ffmpeg.write_frames(
                    tmp,
                    size,
                    fps=fps,
                    codec="libx264",
                    pix_fmt_out="yuv420p",
                    quality=8,
                    macro_block_size=2,
                    output_params=[
                        "-color_primaries",
                        "bt709",
                        "-color_trc",
                        "iec61966-2-1",
                        "-colorspace",
                        "bt709",
                    ],
                )
                writer.send(None)
            if w % 2 or h % 2:
                img = np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            writer.send(np.ascontiguousarray(img))
            n += 1
        if writer is not None:
            writer.close()
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return n


def sim_stats(run_dir: Path, frames: list[int]) -> dict[str, np.ndarray]:
    """Per frame: kinetic energy [J], bonds broken, live rubble and dust counts."""
    keys = ("kinetic_energy", "bonds_broken", "rubble", "dust")
    out = {k: [] for k in ("frame", *keys)}
    for f in frames:
        p = run_dir / "sim" / f"frame.{f:04d}.npz"
        if not p.is_file():
            continue
        d = load_npz(p, SIM_FORMAT)
        out["frame"].append(f)
        out["kinetic_energy"].append(float(d.get("kinetic_energy", np.nan)))
        out["bonds_broken"].append(int(np.count_nonzero(d["bond_broken"])))
        out["rubble"].append(len(d.get("rubble_id", ())))
        out["dust"].append(len(d.get("dust_position", ())))
    return {k: np.asarray(v) for k, v in out.items()}


def plot_sim_stats(stats: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), constrained_layout=True)
    f = stats["frame"]
    axes[0].plot(f, stats["kinetic_energy"], color="tab:red")
    axes[0].set(title="kinetic energy", xlabel="frame", ylabel="J")
    if len(f) and stats["kinetic_energy"].max() > 0:
        axes[0].set_yscale("symlog", linthresh=1.0)
    axes[1].plot(f, stats["bonds_broken"], color="tab:blue")
    axes[1].set(title="bonds broken", xlabel="frame", ylabel="count")
    axes[2].plot(f, stats["rubble"], label="rubble")
    axes[2].plot(f, stats["dust"], label="dust")
    axes[2].set(title="debris", xlabel="frame", ylabel="live particles")
    axes[2].legend()
    _save_fig(fig, path)


def _save_fig(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    from destruct.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _flow_to_rgb(flow: np.ndarray) -> np.ndarray:
    """Motion vectors as colour: hue = direction, saturation = length (relative to the max)."""
    import matplotlib.colors as mcolors

    mag = np.linalg.norm(flow, axis=-1)
    hsv = np.zeros((*flow.shape[:2], 3))
    hsv[..., 0] = (np.arctan2(flow[..., 1], flow[..., 0]) / (2 * np.pi)) % 1.0
    hsv[..., 1] = np.clip(mag / max(float(mag.max()), 1e-6), 0, 1)
    hsv[..., 2] = 1.0
    return mcolors.hsv_to_rgb(hsv)


def _id_colors(ids: np.ndarray) -> np.ndarray:
    """Stable pseudo-random colour per id (0 = black)."""
    x = ids.astype(np.uint64) * np.uint64(2654435761) & np.uint64(0xFFFFFF)
    rgb = (
        np.stack([(x >> np.uint64(s)) & np.uint64(255) for s in (16, 8, 0)], axis=-1).astype(
            np.float32
        )
        / 255
    )
    rgb[ids == 0] = 0
    return rgb


def glue_network(
    shot: Any, run_dir: Path, frame: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Intact bonds at ``frame`` as image-space segments: (starts (n, 2), ends (n, 2), remaining
    strength (n,) 0..1), from piece centre to piece centre (or to the ground point)."""
    from destruct.render.scene import quat_to_matrix
    from destruct.usd import camera_frames

    bp, pp = run_dir / "fracture" / "bonds.npz", run_dir / "sim" / f"frame.{frame:04d}.npz"
    if not bp.is_file() or not pp.is_file():
        return None
    bonds = load_npz(bp, "destruct.bonds/1")
    sim = load_npz(pp, SIM_FORMAT)
    intact = ~sim["bond_broken"].astype(bool)
    pairs = bonds["pairs"][intact]
    if not len(pairs):
        return None
    damage = sim.get("bond_damage", np.zeros(len(intact), np.float32))
    strength = 1.0 - damage[intact].astype(np.float64)
    pos = sim["position"].astype(np.float64)
    a = pos[pairs[:, 0]]
    ground = pairs[:, 1] < 0
    b = pos[np.where(ground, 0, pairs[:, 1])]
    if ground.any():  # ground bonds end at their point, carried along by the piece
        pieces = load_npz(run_dir / "fracture" / "pieces.npz", "destruct.pieces/1")
        i = pairs[ground, 0]
        local = bonds["points"][intact][ground] - pieces["com"][i]
        b[ground] = np.einsum("nij,nj->ni", quat_to_matrix(sim["rotation"][i]), local) + pos[i]
    cam = camera_frames(shot, [frame])[frame]
    ua, da = cam.project(a)
    ub, db = cam.project(b)
    front = (da > 0) & (db > 0)
    return ua[front], ub[front], strength[front]


def plot_overview(shot: Any, run_dir: Path, frame: int, path: Path) -> None:
    """The frame's passes side by side, labelled, plus the glue network over the beauty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    name = shot.shot.name
    panels: list[tuple[str, np.ndarray]] = []
    beauty = _beauty_frame(run_dir, name, frame)
    if beauty is not None:
        panels.append(("beauty", beauty))
    for p in ("depth", "normal", "seg"):
        f = run_dir / "passes" / p / f"{name}.{frame:04d}.png"
        if f.is_file():
            panels.append((p, _read_rgb(f)))
    exr = run_dir / "passes" / f"{name}.{frame:04d}.exr"
    if exr.is_file():
        from destruct.render.exr import read_exr

        d = read_exr(exr)
        if "id" in d:
            panels.append(("id", _id_colors(d["id"])))
        if "motion.X" in d:
            panels.append(
                ("motion", _flow_to_rgb(np.stack([d["motion.X"], d["motion.Y"]], axis=-1)))
            )
        if "occlusion.Y" in d:
            panels.append(("occlusion", d["occlusion.Y"]))
    glue = glue_network(shot, run_dir, frame)
    n = len(panels) + (glue is not None and beauty is not None)
    if n == 0:
        raise UserError(
            f"no passes for frame {frame} in {run_dir / 'passes'}: run the render stage first"
        )
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    h, w = panels[0][1].shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows * h / w + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, img) in zip(axes.flat, panels):
        ax.imshow(
            img,
            cmap="gray" if img.ndim == 2 else None,
            vmin=0,
            vmax=1 if img.dtype != np.uint8 else 255,
        )
        ax.set_title(f"{label}  (frame {frame})")
    if glue is not None and beauty is not None:
        ax = axes.flat[len(panels)]
        ax.imshow((beauty * 0.4).astype(np.uint8))
        starts, ends, strength = glue
        lc = LineCollection(np.stack([starts, ends], axis=1), cmap="RdYlGn", linewidths=0.6)
        lc.set_array(strength)
        lc.set_clim(0, 1)
        ax.add_collection(lc)
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_title(f"glue network: {len(strength)} intact bonds")
        fig.colorbar(lc, ax=ax, fraction=0.03, label="remaining strength")
    fig.tight_layout()
    _save_fig(fig, path)


def run_encode(ctx) -> dict[str, Any]:
    """preview.mp4 (+ refined.mp4 when refine/ frames exist), overview.png, sim_stats.png."""
    shot, run_dir = ctx.shot, Path(ctx.run_dir)
    s = shot.shot
    frames = list(range(s.start_frame, s.start_frame + s.frames))
    name = s.name
    if "beauty" not in shot.render.passes:
        raise StageSkipped(
            "render.passes has no 'beauty', so there is nothing to preview; add it and re-render"
        )
    have = [f for f in frames if _beauty_frame_exists(run_dir, name, f)]
    if not have:
        raise UserError(
            f"no rendered frames in {run_dir / 'passes'}: run the render stage first (--stages render)"
        )
    # a frame recorded as rendered whose files are gone, or a hole in the frames rendered so far
    # (farm chunks landing out of order), would make a preview that jumps: name the frames
    recorded = {f for f in ctx.run.stage("render").get("frames_done", []) if f in frames}
    deleted = sorted(recorded - set(have))
    if deleted:
        raise UserError(
            f"{_frames_text(deleted)} recorded as rendered but {run_dir / 'passes'} has no beauty "
            f"for them (deleted?); re-render: destruct run SHOT --stages render --frames "
            f"{deleted[0]}:{deleted[-1]} --force"
        )
    hole = sorted(set(range(have[0], have[-1] + 1)) - set(have))
    if hole:
        raise UserError(
            f"{_frames_text(hole)} not rendered yet, between rendered ones; render them first: "
            f"destruct run SHOT --stages render --frames {hole[0]}:{hole[-1]}"
        )
    figures: dict[str, Any] = {}
    with ctx.progress(len(have), "encode preview") as bar:

        def beauty_frames():
            for f in have:
                yield _beauty_frame(run_dir, name, f)
                bar.advance()

        figures["preview_frames"] = write_mp4(run_dir / "preview.mp4", beauty_frames(), s.fps)
    refined = [run_dir / "refine" / f"{name}.{f:04d}.png" for f in frames]
    refined = [p for p in refined if p.is_file()]
    if refined:
        figures["refined_frames"] = write_mp4(
            run_dir / "refined.mp4", (_read_rgb(p) for p in refined), s.fps
        )
    middle = have[len(have) // 2]
    plot_overview(shot, run_dir, middle, run_dir / "overview.png")
    stats = sim_stats(run_dir, frames)
    if len(stats["frame"]):
        plot_sim_stats(stats, run_dir / "sim_stats.png")
        figures["bonds_broken"] = int(stats["bonds_broken"].max())
    figures["overview_frame"] = middle
    if len(have) < len(frames):
        ctx.warn(
            f"encode: {len(frames) - len(have)} of {len(frames)} frames are not rendered yet; preview.mp4 skips them"
        )
    return figures


def _frames_text(frames: list[int]) -> str:
    """'frame 1002 is' or 'frames 1002, 1003, ... are' (the first five)."""
    listed = ", ".join(map(str, frames[:5])) + (" ..." if len(frames) > 5 else "")
    return f"frames {listed} are" if len(frames) > 1 else f"frame {listed} is"


def _beauty_frame_exists(run_dir: Path, name: str, frame: int) -> bool:
    return (run_dir / "passes" / "beauty" / f"{name}.{frame:04d}.png").is_file() or (
        run_dir / "passes" / f"{name}.{frame:04d}.exr"
    ).is_file()

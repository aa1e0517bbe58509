"""Temporal consistency from the render's exact motion vectors (DESIGN.md section 8).

Three methods, each switchable (the shot's ``[refine.temporal]`` table):

1. **Warped noise.** The previous frame's initial noise is carried along the motion at latent
   resolution. Choice (after weighing "How I warped your noise", Chang et al. 2024, whose
   integral noise is exact but costs a high-resolution noise field per frame): a *permutation*
   warp. Every noise sample is a particle with a sub-cell position; it moves by the flow at its
   cell and lands in the cell its new position falls in. A cell receives at most one sample
   (on a collision the sample nearest the cell centre wins, the others are dropped) and cells
   that receive none (disocclusion, stretching, entering the frame) get fresh N(0, 1) samples.
   No sample is ever duplicated or interpolated, so the field stays exactly i.i.d. Gaussian
   after any motion, sub-pixel or not; the sub-cell positions are carried along so slow motion
   (0.3 px/frame) still moves the noise instead of sticking to the grid.
2. **Cross-frame attention.** Every self-attention layer of the UNet and of each ControlNet
   takes its keys and values from the window's anchor frame and the current frame together
   (the anchor's layer inputs are recorded per denoising step while the anchor is refined;
   in the large layers they are pooled 2x2, see :class:`CrossFrameState`).
   The processor wraps whatever processor was installed before, so install it last.
3. **Fusion.** The previous refined frame (its final latents), warped to the current one along
   the exact backward motion, is blended into the latents of pixels visible in both frames
   during the first part of the schedule (noised to the matching timestep, so the sampler
   still finishes the detail).

Frames are refined in windows of ``window`` frames overlapping by ``overlap``. Each window
starts fresh from its anchor (its first frame) with noise seeded by (seed, anchor frame), so a
window's frames do not depend on any other window: windows may run in any order or on different
machines and give the same frames. Frames in an overlap are cross-faded linearly between the
two windows that hold them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refine.metrics import warp_image

#: Salts separating the random streams drawn for one frame.
_SALT_INIT, _SALT_WARP = 0, 1


@dataclass(frozen=True)
class TemporalSettings:
    """The shot's ``[refine.temporal]`` plus the fusion schedule."""

    noise_warp: bool = True
    cross_frame: bool = True
    fusion: bool = True
    window: int = 16
    overlap: int = 4
    #: blend weight of the warped previous frame in visible pixels (0..1)
    fusion_weight: float = 1.0
    #: fusion acts on the steps in the first ``fusion_until`` fraction of the schedule
    fusion_until: float = 0.5

    @property
    def any(self) -> bool:
        return self.noise_warp or self.cross_frame or self.fusion

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"refine.temporal.window must be >= 1, got {self.window}")
        if not 0 <= self.overlap < self.window:
            raise ValueError(
                f"refine.temporal.overlap must be 0..window-1 ({self.window - 1}), got {self.overlap}"
            )


@dataclass
class FrameInput:
    """One frame's inputs, float arrays: ``beauty`` (h, w, 3) sRGB in 0..1, ``controls`` one
    (h, w, 3) in 0..1 per ControlNet, ``motion`` / ``back`` (h, w, 2) pixels to the next /
    previous frame, ``occlusion`` (h, w) 1 where the point is hidden in the next frame."""

    frame: int
    beauty: np.ndarray
    controls: list[np.ndarray]
    motion: np.ndarray
    back: np.ndarray
    occlusion: np.ndarray


# ---------------------------------------------------------------------------------------------
# 1. warped noise


def _rng(seed: int, frame: int, salt: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(frame) & 0xFFFFFFFF, salt])
    )


def fresh_noise(shape: tuple[int, ...], seed: int, frame: int) -> np.ndarray:
    """N(0, 1) float32 noise of ``shape`` determined by (seed, frame) alone."""
    return _rng(seed, frame, _SALT_INIT).standard_normal(shape, dtype=np.float32)


def latent_flow(
    motion: np.ndarray, occlusion: np.ndarray, factor: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel motion (H, W, 2) and occlusion (H, W) to latent cells of ``factor`` x ``factor``
    pixels: the flow is the block mean divided by ``factor``; a cell is occluded when at least
    half its pixels are."""
    H, W = motion.shape[:2]
    h, w = H // factor, W // factor
    m = (
        motion[: h * factor, : w * factor].reshape(h, factor, w, factor, 2).mean(axis=(1, 3))
        / factor
    )
    o = occlusion[: h * factor, : w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3)) >= 0.5
    return m.astype(np.float64), o


def warp_noise(
    noise: np.ndarray,
    flow: np.ndarray,
    occluded: np.ndarray,
    rng: np.random.Generator,
    offset: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Carry ``noise`` (c, h, w) along ``flow`` (h, w, 2) in cells; see the module docstring.

    ``offset`` (h, w, 2) is each sample's position within its cell relative to the centre (in
    -0.5..0.5, zeros for fresh noise); the new offsets are returned with the new noise, to pass
    to the next call. Samples at ``occluded`` cells or leaving the grid are dropped; cells left
    empty get fresh samples from ``rng``.
    """
    c, h, w = noise.shape
    if offset is None:
        offset = np.zeros((h, w, 2))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    px = xs + offset[..., 0] + flow[..., 0]
    py = ys + offset[..., 1] + flow[..., 1]
    tx, ty = np.floor(px).astype(np.int64), np.floor(py).astype(np.int64)
    keep = ~occluded & (tx >= 0) & (tx < w) & (ty >= 0) & (ty < h)
    src = np.flatnonzero(keep.ravel())
    dst = (ty * w + tx).ravel()[src]
    # the sample nearest each target cell's centre wins (stable sort: ties go to the lower index)
    dist = ((px - tx - 0.5) ** 2 + (py - ty - 0.5) ** 2).ravel()[src]
    order = np.lexsort((dist, dst))
    dst, src = dst[order], src[order]
    first = np.ones(dst.shape, bool)
    first[1:] = dst[1:] != dst[:-1]
    dst, src = dst[first], src[first]

    out = rng.standard_normal((c, h * w), dtype=np.float32)
    out[:, dst] = noise.reshape(c, h * w)[:, src]
    new_offset = np.zeros((h * w, 2))
    new_offset[dst, 0] = (px.ravel() - tx.ravel() - 0.5)[src]
    new_offset[dst, 1] = (py.ravel() - ty.ravel() - 0.5)[src]
    return out.reshape(c, h, w), new_offset.reshape(h, w, 2)


# ---------------------------------------------------------------------------------------------
# 2. cross-frame attention


@dataclass
class CrossFrameState:
    """Shared by every installed processor. ``mode``: ``"off"`` (plain attention),
    ``"record"`` (plain attention, inputs stored: the anchor frame) or ``"attend"`` (keys and
    values from the stored anchor input and the current one).

    Layers with at least ``pool_min_tokens`` tokens store the anchor's input average-pooled
    2x2: attention cost is quadratic there, and a quarter of the anchor's tokens keeps the
    extra cost of cross-frame attention near 25 % of those layers instead of 100 % (and the
    stored anchor a quarter of the memory) while still carrying its appearance. At SD 1.5's
    512 px these are the 64x64 and 32x32 layers.
    """

    mode: str = "off"
    pool_min_tokens: int = 1024
    latent_hw: tuple[int, int] = (0, 0)
    store: dict[tuple[str, int], Any] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def begin(self, mode: str, latent_hw: tuple[int, int] = (0, 0)) -> None:
        """Start a frame of latent size ``latent_hw``: reset the per-layer step counters;
        ``record`` forgets the old anchor."""
        if mode not in ("off", "record", "attend"):
            raise ValueError(f"cross-frame mode must be off, record or attend, got {mode!r}")
        if mode == "record":
            self.store.clear()
        self.mode = mode
        self.latent_hw = latent_hw
        self.calls.clear()

    def layer_hw(self, tokens: int) -> tuple[int, int] | None:
        """The (h, w) grid of a layer with ``tokens`` tokens: the latent size halved (rounding
        up, as the UNet's strided convolutions do) until it matches; None when none does."""
        h, w = self.latent_hw
        for _ in range(8):
            if h * w == tokens:
                return h, w
            h, w = -(-h // 2), -(-w // 2)
        return None

    def pooled(self, hidden: Any) -> Any:
        """``hidden`` (b, n, c) as stored for attending: 2x2 average-pooled in large layers."""
        import torch.nn.functional as F

        n = hidden.shape[1]
        hw = self.layer_hw(n) if n >= self.pool_min_tokens else None
        if hw is None:
            return hidden
        b, _, c = hidden.shape
        grid = hidden.transpose(1, 2).reshape(b, c, *hw)
        return F.avg_pool2d(grid, 2, ceil_mode=True).flatten(2).transpose(1, 2)


class CrossFrameAttnProcessor:
    """Wraps a self-attention layer's processor; see :class:`CrossFrameState`."""

    def __init__(self, inner: Any, name: str, state: CrossFrameState):
        self.inner = inner
        self.name = name
        self.state = state

    def __call__(
        self,
        attn: Any,
        hidden_states: Any,
        encoder_hidden_states: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        st = self.state
        if st.mode == "off" or encoder_hidden_states is not None or hidden_states.ndim != 3:
            return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
        import torch

        step = st.calls.get(self.name, 0)
        st.calls[self.name] = step + 1
        if st.mode == "record":
            st.store[(self.name, step)] = st.pooled(hidden_states.detach())
            return self.inner(attn, hidden_states, None, *args, **kwargs)
        anchor = st.store.get((self.name, step))
        if anchor is None or anchor.shape[0] != hidden_states.shape[0]:
            raise RuntimeError(
                f"cross-frame attention: no anchor input for {self.name} step {step}; the anchor must be "
                "refined first with the same steps, strength, guidance and resolution"
            )
        return self.inner(
            attn, hidden_states, torch.cat([anchor, hidden_states], dim=1), *args, **kwargs
        )


def install_cross_frame(pipe: Any) -> CrossFrameState:
    """Wrap every self-attention (``attn1``) processor of the UNet and of each ControlNet of a
    diffusers pipeline. Call after anything else that sets attention processors."""
    state = CrossFrameState()
    nets = [("unet", pipe.unet)]
    cn = pipe.controlnet
    nets += [(f"controlnet{i}", n) for i, n in enumerate(getattr(cn, "nets", [cn]))]
    for prefix, net in nets:
        procs = dict(net.attn_processors)
        for name, proc in procs.items():
            if name.endswith("attn1.processor") and not isinstance(proc, CrossFrameAttnProcessor):
                procs[name] = CrossFrameAttnProcessor(proc, f"{prefix}.{name}", state)
        net.set_attn_processor(procs)
    return state


# ---------------------------------------------------------------------------------------------
# 3. fusion


def visible_in_previous(
    back: np.ndarray, prev_motion: np.ndarray, prev_occlusion: np.ndarray, tol: float = 0.5
) -> np.ndarray:
    """(h, w) bool: pixels of the current frame whose point was visible in the previous frame.
    The previous frame's point at ``p + back(p)`` must not be occluded and its forward motion
    must lead back to ``p`` within ``tol`` pixels (disoccluded pixels fail one of the two)."""
    fwd, inside = warp_image(prev_motion, back)
    occ, _ = warp_image(prev_occlusion.astype(np.float32), back)
    err = np.linalg.norm(fwd + back, axis=-1)
    return inside & (occ < 0.5) & (err < tol)


def _min_pool(mask: np.ndarray, factor: int) -> np.ndarray:
    h, w = mask.shape[0] // factor, mask.shape[1] // factor
    return mask[: h * factor, : w * factor].reshape(h, factor, w, factor).all(axis=(1, 3))


def warp_previous(
    latents: Any, current: FrameInput, previous: FrameInput, factor: int
) -> tuple[Any, Any]:
    """The previous frame's final latents (1, c, h, w) warped onto the current frame along the
    backward motion at latent resolution, and the (1, 1, h, w) mask of latent cells whose
    pixels were all visible in the previous frame. Warping latents rather than re-encoding the
    warped image skips a VAE encode per frame and its round-trip loss."""
    import torch

    vis = visible_in_previous(current.back, previous.motion, previous.occlusion)
    H, W = current.back.shape[:2]
    h, w = H // factor, W // factor
    back = (
        current.back[: h * factor, : w * factor].reshape(h, factor, w, factor, 2).mean(axis=(1, 3))
        / factor
    )
    z = latents[0].float().permute(1, 2, 0).cpu().numpy()
    warped, inside = warp_image(z, back)
    mask = _min_pool(vis, factor) & inside
    ref = torch.from_numpy(np.ascontiguousarray(warped)).permute(2, 0, 1)[None].to(latents.dtype)
    return ref, torch.from_numpy(mask.astype(np.float32))[None, None]


def fusion_step(
    pipeline: Any, reference: Any, mask: Any, noise: Any, settings: TemporalSettings
) -> Callable[[int, list[int], Any], Any]:
    """The ``on_step`` callback of :meth:`RefinePipeline.__call__` blending ``reference``
    latents (the warped previous frame, :func:`warp_previous`), noised with this frame's noise
    to the next timestep, into ``mask`` (1, 1, h, w) during the first ``fusion_until`` of the
    schedule."""

    def on_step(i: int, timesteps: list[int], latents: Any) -> Any:
        n = len(timesteps)
        if i + 1 >= n or (i + 1) / n > settings.fusion_until:
            return latents
        ref = pipeline.noised(reference, noise, timesteps[i + 1])
        return latents + settings.fusion_weight * mask.to(latents.dtype) * (
            ref.to(latents.dtype) - latents
        )

    return on_step


# ---------------------------------------------------------------------------------------------
# windows


def plan_windows(frames: Sequence[int], window: int, overlap: int) -> list[tuple[int, ...]]:
    """Split the shot's frames (sorted) into windows of ``window`` frames, consecutive windows
    sharing ``overlap`` frames. The last window may be shorter; none is only overlap."""
    frames = list(frames)
    stride = window - overlap
    out = []
    start = 0
    while True:
        out.append(tuple(frames[start : start + window]))
        start += stride
        if start + overlap >= len(frames):
            return out


def plan_for(frames: Sequence[int], temporal: TemporalSettings) -> list[tuple[int, ...]]:
    """:func:`plan_windows` with the shot's settings; single frames when every temporal method
    is off (frames are then independent and overlaps would only refine them twice)."""
    if not temporal.any:
        return [(f,) for f in frames]
    return plan_windows(frames, temporal.window, temporal.overlap)


def blend_weights(windows: Sequence[tuple[int, ...]]) -> dict[int, list[tuple[int, float]]]:
    """For each frame, ``[(window index, weight), ...]`` summing to 1: linear cross-fade over
    the overlap of two consecutive windows (the later window's weight rises towards its end)."""
    out: dict[int, list[tuple[int, float]]] = {}
    for wi, win in enumerate(windows):
        for f in win:
            out.setdefault(f, []).append((wi, 1.0))
    for wi in range(len(windows) - 1):
        shared = [f for f in windows[wi] if f in set(windows[wi + 1])]
        for k, f in enumerate(shared):
            b = (k + 1) / (len(shared) + 1)
            out[f] = [(wi, 1.0 - b), (wi + 1, b)]
    return out


def windows_for(frames: Iterable[int], windows: Sequence[tuple[int, ...]]) -> list[int]:
    """Indices of the windows holding any of ``frames``."""
    wanted = set(frames)
    return [i for i, w in enumerate(windows) if wanted.intersection(w)]


def crossfade(
    outputs: dict[int, dict[int, np.ndarray]],
    weights: dict[int, list[tuple[int, float]]],
    frame: int,
) -> np.ndarray:
    """A frame from the windows' outputs (``outputs[window][frame]``) with its blend weights."""
    return sum(w * outputs[wi][frame] for wi, w in weights[frame]).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# one window


@dataclass
class RefineSettings:
    """The shot's ``[refine]`` generation settings."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    strength: float = 0.6
    guidance: float = 7.0
    seed: int = 0


def refine_window(
    pipeline: Any,
    frames: Sequence[FrameInput],
    settings: RefineSettings,
    temporal: TemporalSettings,
    state: CrossFrameState | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> list[np.ndarray]:
    """Refine consecutive frames starting fresh at ``frames[0]`` (the anchor). ``state`` is the
    :func:`install_cross_frame` state of ``pipeline.pipe`` (needed when ``temporal.cross_frame``).
    Returns one (h, w, 3) float32 image per frame. With every temporal method off each frame
    is refined alone, from noise seeded by (seed, frame)."""
    import torch

    if temporal.cross_frame and state is None:
        raise ValueError(
            "cross_frame needs the state returned by install_cross_frame(pipeline.pipe)"
        )
    s = pipeline.vae_scale_factor
    outs: list[np.ndarray] = []
    noise = offset = latents = None
    for k, fr in enumerate(frames):
        h, w = fr.beauty.shape[:2]
        shape = pipeline.latent_shape(h, w)
        if k == 0 or not temporal.noise_warp:
            noise, offset = fresh_noise(shape, settings.seed, fr.frame), None
        else:
            prev = frames[k - 1]
            flow, occl = latent_flow(prev.motion, prev.occlusion, s)
            noise, offset = warp_noise(
                noise, flow, occl, _rng(settings.seed, fr.frame, _SALT_WARP), offset
            )
        noise_t = torch.from_numpy(noise)[None].to(pipeline.device)
        if state is not None:
            mode = ("record" if k == 0 else "attend") if temporal.cross_frame else "off"
            state.begin(mode, shape[1:])
        on_step = None
        if temporal.fusion and k > 0:
            reference, mask = warp_previous(latents, fr, frames[k - 1], s)
            on_step = fusion_step(
                pipeline, reference.to(pipeline.device), mask.to(pipeline.device), noise_t, temporal
            )
        result = pipeline(
            fr.beauty,
            fr.controls,
            noise_t,
            prompt=settings.prompt,
            negative_prompt=settings.negative_prompt,
            steps=settings.steps,
            strength=settings.strength,
            guidance=settings.guidance,
            on_step=on_step,
        )
        outs.append(result.image)
        latents = result.latents
        if on_frame is not None:
            on_frame(fr.frame)
    if state is not None:
        state.begin("off")
        state.store.clear()
    return outs


def refine_sequence(
    pipeline: Any,
    frames: Sequence[FrameInput],
    settings: RefineSettings,
    temporal: TemporalSettings,
    state: CrossFrameState | None = None,
    order: Sequence[int] | None = None,
) -> dict[int, np.ndarray]:
    """Refine a whole sequence in windows (in ``order`` of window indices, default ascending)
    and cross-fade the overlaps. Returns ``{frame: image}``."""
    by_frame = {f.frame: f for f in frames}
    windows = plan_for(sorted(by_frame), temporal)
    outputs: dict[int, dict[int, np.ndarray]] = {}
    for wi in order if order is not None else range(len(windows)):
        imgs = refine_window(
            pipeline, [by_frame[f] for f in windows[wi]], settings, temporal, state
        )
        outputs[wi] = dict(zip(windows[wi], imgs))
    weights = blend_weights(windows)
    return {f: crossfade(outputs, weights, f) for f in sorted(by_frame)}

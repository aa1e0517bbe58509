"""Refine throughput (issue 7): seconds per frame, plain diffusers vs the temporal method.

Tiny random models (``refine.testing``) on the CPU, one torch thread (tiny convolutions run
~10x slower with two threads on this shared 2-core machine), 2 ControlNets, 3 denoising steps
(4 steps at strength 0.75), synthetic passes with known motion. Three ways per frame:

- ``plain``: ``StableDiffusionControlNetImg2ImgPipeline.__call__`` as diffusers ships it (its
  own VAE encode and noising from a seeded generator, float output);
- ``per_frame``: destruct's path with every temporal method off (deterministic encode,
  ``latents=``, latent output decoded by destruct);
- ``temporal``: warped noise + cross-frame attention + fusion, one window.

``overhead`` is temporal / plain - 1 on CPU seconds (less sensitive to the other processes on
the machine than wall time); the target is at most 0.20. Real models spend far longer in the
UNet, so the fixed per-frame costs here (noise warp, masks) weigh less there. Each way runs
``repeats`` times round-robin and the fastest run counts. The warping
error of each way is reported too (exact motion, sRGB 0..1).

Run as a script to write ``benchmarks/results/refine.json`` / ``.md`` (``--quick``: fewer
frames and sizes).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _timed(fn) -> tuple[Any, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def run(quick: bool = False) -> list[dict[str, Any]]:
    import torch

    from refine.metrics import warping_error
    from refine.pipeline import ControlKind, ControlSpec, load_pipeline
    from refine.temporal import RefineSettings, TemporalSettings, install_cross_frame, refine_window
    from refine.testing import save_tiny_set, synthetic_frames

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    records = []
    sizes = [64] if quick else [64, 128]
    n = 4 if quick else 8
    repeats = 2 if quick else 3
    try:
        with tempfile.TemporaryDirectory() as tmp:
            spec = save_tiny_set(Path(tmp))
            controls = [
                ControlSpec(ControlKind(c["kind"]), c["model"], c["scale"])
                for c in spec["controlnets"]
            ]
            rp = load_pipeline(spec["model"], controls, device="cpu")
            state = install_cross_frame(rp.pipe)
            settings = RefineSettings(
                prompt="a concrete building collapsing", steps=4, strength=0.75, seed=0
            )
            for size in sizes:
                frames = synthetic_frames(n, size, velocity=(2.0, 1.0))
                mot, occ = [f.motion for f in frames], [f.occlusion for f in frames]

                def plain(frames=frames, size=size):
                    out = []
                    for fr in frames:
                        res = rp.pipe(
                            prompt=settings.prompt,
                            image=torch.from_numpy(fr.beauty).permute(2, 0, 1)[None],
                            control_image=[
                                torch.from_numpy(c).permute(2, 0, 1)[None] for c in fr.controls
                            ],
                            height=size,
                            width=size,
                            strength=settings.strength,
                            num_inference_steps=settings.steps,
                            guidance_scale=settings.guidance,
                            generator=torch.Generator().manual_seed(fr.frame),
                            output_type="np",
                        )
                        out.append(res.images[0])
                    return out

                ways = {
                    "plain": plain,
                    "per_frame": lambda frames=frames: refine_window(
                        rp, frames, settings, TemporalSettings(False, False, False, n, 0), state
                    ),
                    "temporal": lambda frames=frames: refine_window(
                        rp, frames, settings, TemporalSettings(window=n, overlap=0), state
                    ),
                }
                ways["plain"]()  # warm up (first calls allocate)
                # round-robin repeats, the fastest of each: the other processes on the machine
                # only ever add time
                best: dict[str, tuple[float, float]] = {}
                imgs: dict[str, list] = {}
                for _ in range(repeats):
                    for name, fn in ways.items():
                        imgs[name], wall, cpu = _timed(fn)
                        old = best.get(name, (np.inf, np.inf))
                        best[name] = (min(old[0], wall), min(old[1], cpu))
                for name in ways:
                    wall, cpu = best[name]
                    records.append(
                        {
                            "name": f"refine_{name}",
                            "size": size,
                            "frames": n,
                            "steps_run": len(rp.timesteps(settings.steps, settings.strength)),
                            "seconds_per_frame": round(wall / n, 4),
                            "cpu_seconds_per_frame": round(cpu / n, 4),
                            "warping_error": round(
                                warping_error([np.asarray(i) for i in imgs[name]], mot, occ), 6
                            ),
                        }
                    )
                results = {name: cpu for name, (_, cpu) in best.items()}
                records.append(
                    {
                        "name": "refine_temporal_overhead",
                        "size": size,
                        "frames": n,
                        "overhead": round(results["temporal"] / results["plain"] - 1.0, 4),
                        "target": 0.2,
                    }
                )
    finally:
        torch.set_num_threads(threads)
    return records


if __name__ == "__main__":
    import sys
    from pathlib import Path as _Path

    sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))
    from benchmarks.runner import script

    script(__file__)

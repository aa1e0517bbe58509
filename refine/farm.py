"""Refine windows on Ray (DESIGN.md section 9, issue 11).

Windows are independent (each starts fresh from its anchor), so they can be refined anywhere
in any order: one actor per GPU (``num_gpus=1``; on a CPU-only cluster, one per ``cpus_per_actor``
CPUs) holds the pipeline and takes windows as it frees up. Each window lands atomically in the run
directory's window cache (``refine/.windows/``); the ``refine`` stage that runs afterwards finds
them all, cross-fades the seams and writes the frames, exactly as a sequential run would.

A worker that dies mid-window (a crashed process, a lost node) is restarted by Ray and the window
is retried (``max_restarts`` / ``max_task_retries``); the window cache is written by rename, so a
half-written window is never trusted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from destruct.errors import UserError
from refine.models import MissingWeights
from refine.stage import WindowRefiner, shot_windows

RETRIES = 3


class FarmWorker(WindowRefiner):
    """A :class:`WindowRefiner` as a Ray actor.

    ``crash_once`` is fault injection, for tests only: a file holding a window index. The worker
    that refines that window kills its own process mid-window, once the window's first frame is
    refined and before the second one starts (so its window cache is never written), after
    overwriting the file with ``killed after 1 frame of window <index>`` so the retry runs on.
    """

    def __init__(
        self, shot: Any, run_dir: str, *, force: bool = False, crash_once: str | None = None
    ):
        self.crash_once = crash_once
        # a pipeline that cannot load (missing weights, a bad folder, no GPU) is kept as plain
        # data for the driver (check): raised here, Ray would kill the actor and hand the
        # driver a wrapped, possibly unpicklable exception instead
        self.failure: tuple[str, str, str] | None = None
        try:
            super().__init__(shot, run_dir, force=force)
        except MissingWeights as e:
            self.failure = ("missing", e.name, e.command)
        except UserError as e:
            self.failure = ("user", str(e), "")

    def check(self) -> tuple[str, str, str] | None:
        """Why this worker cannot refine, or None: ("missing", name, pull command) or
        ("user", message, "")."""
        return self.failure

    def refine(self, index: int) -> str:
        marker = Path(self.crash_once) if self.crash_once else None
        if marker is not None and marker.is_file() and marker.read_text().strip() == str(index):
            self.rp = _DieAfterOneFrame(self.rp, marker, index)
        return super().refine(index)

    def pid(self) -> int:
        return os.getpid()


class _DieAfterOneFrame:
    """Test hook of :class:`FarmWorker` (``crash_once``): the window's refine pipeline, which
    refines the first frame and kills the process when asked for the second."""

    def __init__(self, rp: Any, marker: Path, index: int):
        self._rp, self._marker, self._index, self._calls = rp, marker, index, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rp, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._calls += 1
        if self._calls > 1:
            self._marker.write_text(f"killed after 1 frame of window {self._index}")
            os._exit(1)
        return self._rp(*args, **kwargs)


def plan(ray: Any, actors: int | None, cpus_per_actor: float) -> tuple[int, dict[str, float]]:
    """How many actors and what each asks for: one per GPU when the cluster has GPUs."""
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    if gpus:
        return (actors or gpus), {"num_gpus": 1, "num_cpus": 1}
    cpus = max(1, int(res.get("CPU", 1) // cpus_per_actor))
    return (actors or cpus), {"num_gpus": 0, "num_cpus": cpus_per_actor}


def refine_windows(
    shot: Any,
    run_dir: str | Path,
    ray: Any,
    *,
    frames: Sequence[int] | None = None,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    crash_once: str | None = None,
) -> list[str]:
    """Refine the windows holding ``frames`` (default: all) on Ray; returns their cache paths.

    ``ray`` is the initialised module (:func:`destruct.raycluster.connect`). ``progress(done,
    total)`` is called as windows finish.
    """
    from refine.temporal import windows_for

    wanted = shot.frame_numbers() if frames is None else list(frames)
    needed = windows_for(wanted, shot_windows(shot))
    if not needed:
        return []
    n, resources = plan(ray, actors, cpus_per_actor)
    n = max(1, min(n, len(needed)))
    worker = ray.remote(max_restarts=RETRIES, max_task_retries=RETRIES, **resources)(FarmWorker)
    workers = [
        worker.remote(shot, str(run_dir), force=force, crash_once=crash_once) for _ in range(n)
    ]
    for failure in ray.get([w.check.remote() for w in workers]):
        if failure is not None:
            kind, what, command = failure
            if kind == "missing":
                raise MissingWeights(what, command)
            raise UserError(f"on a Ray worker: {what}")
    pool = ray.util.ActorPool(workers)
    paths = []
    for i, path in enumerate(pool.map_unordered(lambda a, w: a.refine.remote(w), needed), 1):
        paths.append(path)
        if progress is not None:
            progress(i, len(needed))
    return sorted(paths)

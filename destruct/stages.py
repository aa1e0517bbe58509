"""What a stage sees: the :class:`StageContext`, and the registry of stage entry points.

A stage is a function ``run_<stage>(ctx: StageContext) -> dict`` returning its figures (the
numbers ``destruct info`` shows). It reads earlier stages' artifacts from ``ctx.run_dir`` only.
It raises :class:`destruct.errors.StageSkipped` to be recorded as skipped (retried next run) and
:class:`destruct.errors.UserError` for bad input.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from destruct.errors import StageNotBuilt, UserError
from destruct.rundir import RunDir

if TYPE_CHECKING:
    from destruct.shot import Shot


class Stage(str, enum.Enum):
    PREPARE = "prepare"
    SIMULATE = "simulate"
    RENDER = "render"
    REFINE = "refine"
    ENCODE = "encode"


#: Entry point of each stage, imported lazily so ``import destruct`` stays light.
ENTRY_POINTS: dict[Stage, str] = {
    Stage.PREPARE: "destruct.fracture:run_prepare",
    Stage.SIMULATE: "destruct.simulate:run_simulate",
    Stage.RENDER: "destruct.render:run_render",
    Stage.REFINE: "refine.stage:run_refine",
    Stage.ENCODE: "destruct.encode:run_encode",
}

#: Stages that produce one artifact per frame and record each frame as it lands.
PER_FRAME = {Stage.RENDER, Stage.REFINE}


def _render_outputs(shot: Shot, f: int) -> list[str]:
    stem, r = f"{shot.shot.name}.{f:04d}", shot.render
    pngs = [p for p in ("beauty", "depth", "normal", "seg") if p in r.passes] if r.png else []
    return ([f"passes/{stem}.exr"] if r.exr else []) + [f"passes/{p}/{stem}.png" for p in pngs]


#: The files (relative to the run folder) each frame of a stage leaves, so a stage recorded
#: as done whose files were deleted since is noticed and redone (pipeline._lost_frames).
FRAME_OUTPUTS: dict[Stage, Callable[[Shot, int], list[str]]] = {
    Stage.SIMULATE: lambda shot, f: [f"sim/frame.{f:04d}.npz"],
    Stage.RENDER: _render_outputs,
    Stage.REFINE: lambda shot, f: [f"refine/{shot.shot.name}.{f:04d}.png"],
}


def owned_by_other(entry: dict, inputs_hash: str) -> bool:
    """Whether a stage entry now belongs to a run with other inputs (another shot took the
    folder over while this run ran)."""
    theirs = entry.get("inputs_hash")
    return bool(inputs_hash and theirs and theirs != inputs_hash)


def check_owner(entry: dict, inputs_hash: str, stage: str, root: Path) -> None:
    """Refuse to record into a stage entry that another run, with other inputs, now owns."""
    if owned_by_other(entry, inputs_hash):
        raise UserError(
            f"another run with other inputs took over the {stage} stage of {root} while this one "
            "ran; this run stops so their frames do not mix: run one shot per folder at a time "
            "(another --out for the other shot)"
        )


def entry_point(stage: Stage) -> Callable[[StageContext], dict[str, Any]]:
    """Import a stage's function; a missing one is a stage not built yet (exit 3)."""
    module, func = ENTRY_POINTS[stage].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise StageNotBuilt(
                f"stage {stage.value!r} is not built yet in this version of destruct; "
                "the stages before it are complete (choose stages with --stages)"
            ) from None
        raise
    fn = getattr(mod, func, None)
    if fn is None:
        raise StageNotBuilt(f"stage {stage.value!r} is not built yet in this version of destruct")
    return fn


class _NullBar:
    def advance(self, n: int = 1) -> None:
        pass


@dataclass
class StageContext:
    """Everything a stage needs. Frames are absolute frame numbers (start_frame based)."""

    shot: Shot
    run: RunDir
    stage: Stage
    frames: list[int]
    backend: str = "cpu"
    force: bool = False
    quiet: bool = False
    _progress: Any = field(default=None, repr=False)
    #: the stage's inputs hash (pipeline.inputs_hash): what a stage's own caches are keyed by
    inputs_hash: str = ""

    @property
    def run_dir(self) -> Path:
        return self.run.root

    def path(self, *parts: str) -> Path:
        """A path inside the run directory, parent folder created."""
        return self.run.path(*parts)

    def frames_todo(self) -> list[int]:
        """This invocation's frames not yet recorded as done (all of them with --force)."""
        if self.force:
            return list(self.frames)
        done = set(self.run.stage(self.stage.value).get("frames_done", []))
        return [f for f in self.frames if f not in done]

    def frame_done(self, frame: int) -> None:
        """Record one finished frame in the manifest (under the lock). A run with other inputs
        that took the stage over meanwhile (another shot on this folder) stops this one: its
        frames must not be recorded as the other's."""
        with self.run.update() as m:
            entry = m.setdefault("stages", {}).setdefault(self.stage.value, {})
            check_owner(entry, self.inputs_hash, self.stage.value, self.run.root)
            done = set(entry.get("frames_done", []))
            done.add(int(frame))
            entry["frames_done"] = sorted(done)

    @contextmanager
    def progress(self, total: int, description: str) -> Iterator[Any]:
        """A progress bar (rich) with ``.advance(n=1)``; silent with --quiet."""
        if self.quiet or self._progress is None:
            yield _NullBar()
            return
        task = self._progress.add_task(description, total=total)

        class _Bar:
            def advance(_self, n: int = 1) -> None:
                self._progress.advance(task, n)

        try:
            yield _Bar()
        finally:
            self._progress.remove_task(task)

    def warn(self, message: str) -> None:
        """A warning line on stderr (not in --quiet)."""
        if not self.quiet:
            import sys

            print(f"warning: {message}", file=sys.stderr)

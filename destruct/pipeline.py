"""Run the stages of a shot into a run directory (DESIGN.md section 2).

Data flows one way through files. Each stage records in the manifest the hash of the inputs it
used (the shot sections it reads plus its upstream stage's hash); a stage is skipped when it is
``done`` with the same inputs hash (unless ``force``), runs again when its inputs changed, and a
``skipped`` stage (e.g. no weights) is tried again on every run.
"""

from __future__ import annotations

import hashlib
import numbers
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from destruct import resources
from destruct.errors import DestructError, StageSkipped, UserError
from destruct.io import atomic_write_bytes, process_alive, remove_stale_temps, this_process
from destruct.rundir import MANIFEST_FORMAT, RunDir
from destruct.shot import Shot
from destruct.stages import (
    FRAME_OUTPUTS,
    PER_FRAME,
    Stage,
    StageContext,
    check_owner,
    entry_point,
    owned_by_other,
)

ORDER = list(Stage)

#: Shot sections each stage reads; its inputs hash also covers the upstream stage's hash.
SECTIONS: dict[Stage, tuple[str, ...]] = {
    Stage.PREPARE: ("building", "materials", "fracture", "charges", "seed", "anchor"),
    Stage.SIMULATE: ("materials", "charges", "regions", "impactors", "sim", "debris", "shot"),
    Stage.RENDER: ("camera", "render", "shot", "materials", "sim", "charges"),
    Stage.REFINE: ("refine", "shot"),
    Stage.ENCODE: ("shot", "camera"),
}
UPSTREAM: dict[Stage, tuple[Stage, ...]] = {
    Stage.PREPARE: (),
    Stage.SIMULATE: (Stage.PREPARE,),
    Stage.RENDER: (Stage.PREPARE, Stage.SIMULATE),
    Stage.REFINE: (Stage.RENDER,),
    Stage.ENCODE: (Stage.RENDER,),
}
PACKAGES = (
    "destruct",
    "numpy",
    "taichi",
    "trimesh",
    "manifold3d",
    "pyrender2",
    "torch",
    "diffusers",
)


def inputs_hash(shot: Shot, stage: Stage) -> str:
    """Hash of what a stage reads: its shot sections and, recursively, its upstream stages."""
    d = shot.to_dict()
    parts: dict[str, Any] = {}
    for s in SECTIONS[stage]:
        if s == "seed":
            parts[s] = shot.shot.seed
        elif s == "anchor":
            parts[s] = shot.sim.anchor_to_ground
        else:
            parts[s] = d.get(s)
    parts["upstream"] = [inputs_hash(shot, u) for u in UPSTREAM[stage]]
    import json

    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def parse_stages(text: str | None) -> list[Stage]:
    """``"render,encode"`` -> stages in pipeline order; None -> all."""
    if not text:
        return list(ORDER)
    names = [t.strip() for t in text.split(",") if t.strip()]
    allowed = [s.value for s in ORDER]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise UserError(
            f"--stages {text!r}: unknown stage {', '.join(bad) or '(none)'}; allowed: {','.join(allowed)}"
        )
    return [s for s in ORDER if s.value in names]


def parse_frames(text: str | None, shot: Shot) -> list[int]:
    """``"1001:1010"`` (inclusive) -> frame numbers inside the shot; None -> all frames."""
    all_frames = shot.frame_numbers()
    if not text:
        return all_frames
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise UserError(
            f"--frames {text!r}: use A:B with whole frame numbers, e.g. 1001:1024"
        ) from None
    lo, hi = all_frames[0], all_frames[-1]
    if a > b or a < lo or b > hi:
        raise UserError(
            f"--frames {text!r}: must be a range A <= B inside the shot's frames {lo}:{hi}"
        )
    return list(range(a, b + 1))


def _stage_list(stages: Any) -> list[Stage]:
    if stages is None or isinstance(stages, str):
        return parse_stages(stages)
    if isinstance(stages, Stage):
        stages = [stages]
    if not isinstance(stages, Iterable) or not all(isinstance(s, (Stage, str)) for s in stages):
        raise TypeError(f"run: stages {stages!r}: give 'render,encode' or a list of stage names")
    return parse_stages(",".join(s.value if isinstance(s, Stage) else s for s in stages))


def _frame_list(frames: Any, shot: Shot) -> list[int]:
    if frames is None or isinstance(frames, str):
        return parse_frames(frames, shot)
    if isinstance(frames, numbers.Integral) and not isinstance(frames, bool):
        frames = [frames]
    if not isinstance(frames, Iterable):
        raise TypeError(f"run: frames {frames!r}: give 'A:B', a frame number or frame numbers")
    frames = list(frames)
    if not all(isinstance(f, numbers.Integral) and not isinstance(f, bool) for f in frames):
        raise TypeError(f"run: frames {frames!r}: frame numbers are whole numbers")
    wanted, inside = {int(f) for f in frames}, set(shot.frame_numbers())
    outside = sorted(wanted - inside)
    if outside or not frames:
        lo, hi = min(inside), max(inside)
        raise UserError(f"frames {outside or '[]'}: give frames inside the shot's {lo}:{hi}")
    return sorted(wanted)


def default_out(shot: Shot) -> Path:
    """Run folder: shot.output.dir, else renders/<name>, relative to the current directory."""
    return Path(shot.output.dir) if shot.output.dir else Path("renders") / shot.shot.name


def _versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            continue
    return out


@dataclass
class RunResult:
    """What a run did: the run folder, the final manifest and the exit code it implies."""

    run_dir: Path
    manifest: dict[str, Any]
    ran: list[str] = field(default_factory=list)
    exit_code: int = 0


def run(
    shot: Shot,
    out: str | Path | None = None,
    stages: Iterable[Stage | str] | str | None = None,
    *,
    frames: str | int | Iterable[int] | None = None,
    backend: str | None = None,
    force: bool = False,
    quiet: bool = True,
    progress: Any = None,
    log: Any = None,
    ray: str | None = None,
) -> RunResult:
    """Run ``stages`` (default: all) of ``shot`` into ``out`` (default renders/<name>).

    ``stages``: "render,encode", or Stage members or names; ``frames``: "A:B", one frame
    number or frame numbers, inside the shot. ``ray``: a Ray address ("auto", "local",
    "host:port"): refine windows are farmed out to one actor per GPU before the refine stage
    cross-fades and writes the frames. Arguments are checked before anything is written.
    """
    if not isinstance(shot, Shot):
        raise TypeError(f"run: shot is a {type(shot).__name__}; give destruct.load_shot(path)")
    stages = _stage_list(stages)
    frame_list = _frame_list(frames, shot)
    if ray is not None:
        from destruct.raycluster import check_address

        check_address(ray)
    backend = backend or shot.sim.backend
    if backend not in ("auto", "cpu", "cuda"):
        raise UserError(f"--backend {backend!r}: allowed: auto, cpu, cuda")
    rd = RunDir(out if out is not None else default_out(shot))
    rd.check_writable_target()
    rd.create()
    remove_stale_temps(rd.root)
    say = log or (lambda msg: None)
    if force and (kept := rd.set_aside_damaged()):
        say(f"warning: {rd.manifest_path} did not read: kept as {kept.name}; starting it over")

    for stage in stages:  # before the shot and its hash are written over another run's
        _check_takeover(rd, stage, inputs_hash(shot, stage), force)
    with rd.update() as m:
        m["format"] = MANIFEST_FORMAT
        m["shot"] = shot.shot.name
        m["shot_hash"] = shot.hash()
        m["seed"] = shot.shot.seed
        m["backend"] = backend
        m["frames"] = [shot.frame_numbers()[0], shot.frame_numbers()[-1]]
        m["versions"] = _versions()
        m.setdefault("stages", {})
    atomic_write_bytes(rd.path("shot.toml"), shot.to_toml().encode())

    result = RunResult(rd.root, {})
    for stage in stages:
        code = _run_stage(
            shot, rd, stage, stages, frame_list, backend, force, quiet, progress, say, ray
        )
        if code:
            result.ran.append(stage.value)
    result.manifest = rd.read()
    return result


#: what a Ctrl-C leaves behind (the stage's reason in the manifest, the CLI's last line)
INTERRUPTED = "interrupted: finished frames are kept; run the same command again to resume"


def _run_stage(
    shot, rd, stage, requested, frame_list, backend, force, quiet, progress, say, ray=None
) -> bool:
    """Run one stage if needed. Returns True when it ran."""
    name = stage.value
    h = inputs_hash(shot, stage)
    entry = rd.stage(name)
    for up in UPSTREAM[stage]:
        if up in requested:
            continue
        ue = rd.stage(up.value)
        if ue.get("status") not in ("done", "partial") or ue.get("inputs_hash") != inputs_hash(
            shot, up
        ):
            raise UserError(
                f"stage {name!r} needs {up.value!r} done for this shot first "
                f"(it is {ue.get('status', 'not run')}{', for other inputs' if ue.get('status') == 'done' else ''}); "
                f"run: destruct run SHOT --stages {up.value},{name}"
            )
    if stage is Stage.REFINE and not shot.refine.enabled:
        _record(
            rd, name, status="skipped", reason="refine.enabled = false in the shot", inputs_hash=h
        )
        say(f"{name}: skipped (disabled in the shot)")
        return False
    fn = entry_point(stage)
    resources.check(shot, stage, backend=backend)
    stage_frames = frame_list if stage in PER_FRAME else shot.frame_numbers()
    same_inputs = entry.get("inputs_hash") == h
    _check_takeover(rd, stage, h, force)
    if not same_inputs or force:
        with rd.update() as m:
            m["stages"][name] = {"inputs_hash": h, "frames_done": []}
    elif lost := _lost_frames(shot, rd, stage, stage_frames, entry):
        # files deleted since they were recorded: redo those frames (simulate resumes from the
        # last checkpoint before the first hole)
        say(
            f"{name}: frames {lost[0]}..{lost[-1]} are recorded done but files are gone; redoing them"
        )
        with rd.update() as m:
            e = m["stages"][name]
            e["frames_done"] = sorted(set(e.get("frames_done", [])) - set(lost))
            e["status"] = "partial"
    elif entry.get("status") == "done" and (
        stage not in PER_FRAME or set(stage_frames) <= set(entry.get("frames_done", []))
    ):
        say(f"{name}: up to date")
        if stage is Stage.SIMULATE and shot.output.usd and not rd.path("scene.usdc").is_file():
            _export_usd(rd, say)  # usd switched on after the simulation ran
        return False

    _record(rd, name, status="running", inputs_hash=h, owner=this_process())
    ctx = StageContext(
        shot=shot,
        run=rd,
        stage=stage,
        frames=stage_frames,
        backend=backend,
        force=force,
        quiet=quiet,
        _progress=progress,
        inputs_hash=h,
    )
    say(f"{name}: running")
    t0 = time.perf_counter()
    try:
        if stage is Stage.REFINE and ray:
            _farm_refine(ctx, ray, say)
        figures = fn(ctx) or {}
    except StageSkipped as e:
        _record(
            rd,
            name,
            status="skipped",
            reason=e.reason,
            inputs_hash=h,
            seconds=time.perf_counter() - t0,
        )
        say(f"{name}: skipped: {e.reason}")
        return True
    except DestructError as e:
        _record(rd, name, status="failed", reason=str(e).splitlines()[0], inputs_hash=h)
        raise
    except KeyboardInterrupt:
        # the frames finished so far are on disk and recorded; the next run resumes from them
        _record(rd, name, status="interrupted", reason=INTERRUPTED, inputs_hash=h)
        raise
    except Exception as e:
        _record(rd, name, status="failed", reason=f"{type(e).__name__}: {e}", inputs_hash=h)
        raise
    seconds = time.perf_counter() - t0
    with rd.update() as m:
        e = m["stages"].setdefault(name, {})
        check_owner(e, h, name, rd.root)
        done = set(e.get("frames_done", []))
        complete = stage not in PER_FRAME or set(shot.frame_numbers()) <= done
        e.update(
            status="done" if complete else "partial",
            inputs_hash=h,
            reason="",
            seconds=round(
                seconds + (e.get("seconds", 0.0) if stage in PER_FRAME and same_inputs else 0.0), 3
            ),
        )
        e["figures"] = {**e.get("figures", {}), **figures}
    say(f"{name}: {'done' if complete else 'partial'} in {seconds:.1f} s")
    if stage is Stage.SIMULATE and shot.output.usd:
        _export_usd(rd, say)
    return True


def _check_takeover(rd: RunDir, stage: Stage, h: str, force: bool) -> None:
    """Refuse to start ``stage`` (inputs hash ``h``) when a run with other inputs has marked it
    running: always while that run's process is alive on this host, and without ``force`` when
    that cannot be told (a killed run leaves its stage marked running; a farm node's process is
    not visible here)."""
    name, entry = stage.value, rd.stage(stage.value)
    if entry.get("status") != "running" or entry.get("inputs_hash") == h:
        return
    owner = entry.get("owner") if isinstance(entry.get("owner"), dict) else {}
    alive = process_alive(owner.get("host"), owner.get("pid"), owner.get("started"))
    if alive:
        raise UserError(
            f"the {name} stage of {rd.root} is being run for other inputs by process "
            f"{owner['pid']} on this host; --force only takes over the stage of a run that is "
            "gone: wait for that run or stop it, or use another --out"
        )
    if alive is None and not force:
        raise UserError(
            f"the {name} stage of {rd.root} is running for other inputs (another destruct run "
            "with a different shot?); wait for it or use another --out, or re-run with --force "
            "if no other run is alive (a killed run leaves it marked running)"
        )


def _lost_frames(shot: Shot, rd: RunDir, stage: Stage, frames: list[int], entry: dict) -> list[int]:
    """Frames of ``frames`` recorded done that lack one of their files (stages.FRAME_OUTPUTS):
    a per-frame stage's recorded frames, every frame of another stage once it is done."""
    outputs = FRAME_OUTPUTS.get(stage)
    if outputs is None:
        return []
    if stage in PER_FRAME:
        done = set(entry.get("frames_done", []))
        frames = [f for f in frames if f in done]
    elif entry.get("status") != "done":
        return []
    return [f for f in frames if not all((rd.root / p).is_file() for p in outputs(shot, f))]


def _farm_refine(ctx: StageContext, address: str, say) -> None:
    """Refine this invocation's windows on Ray first; the stage then only cross-fades them."""
    from destruct.raycluster import connect
    from refine.farm import refine_windows
    from refine.models import MissingWeights
    from refine.stage import shot_windows
    from refine.temporal import windows_for

    todo = ctx.frames_todo()
    if not todo:
        return
    ray = connect(address)
    try:
        with ctx.progress(
            len(windows_for(todo, shot_windows(ctx.shot))), "refine windows on Ray"
        ) as bar:
            refine_windows(
                ctx.shot,
                ctx.run_dir,
                ray,
                frames=todo,
                force=ctx.force,
                progress=lambda done, total: bar.advance(),
            )
    except MissingWeights as e:
        raise StageSkipped(f"no weights: {e.command}") from None
    say(f"{ctx.stage.value}: windows farmed on Ray")


def _export_usd(rd: RunDir, say) -> None:
    """``[output] usd = true``: write scene.usdc right after the simulation."""
    from destruct.usd import export_run

    t0 = time.perf_counter()
    path = export_run(rd.root)
    with rd.update() as m:
        m["stages"]["simulate"].setdefault("figures", {})["usd_seconds"] = round(
            time.perf_counter() - t0, 3
        )
    say(f"usd: wrote {path.name}")


def _record(rd: RunDir, name: str, **fields: Any) -> None:
    """Update a stage's entry, unless a run with other inputs owns it now (check_owner)."""
    with rd.update() as m:
        e = m["stages"].setdefault(name, {})
        if owned_by_other(e, fields.get("inputs_hash", "")):
            return
        e.update(fields)
        if "seconds" in e:
            e["seconds"] = round(e["seconds"], 3)

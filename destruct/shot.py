"""The shot file (DESIGN.md section 4): a pydantic schema with ``extra="forbid"``.

Every field carries a one-line description with its unit. Numbers are strict (a string where a
number belongs is an error, not a conversion) and finite. :func:`load_shot` reads TOML, resolves
paths against the shot file's folder and turns every validation problem into one line of a
:class:`~destruct.errors.UserError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from destruct.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: a point of the scene [m]: within 1000 km of the origin (1e308 overflowed the camera maths)
Coord = Annotated[float, Field(ge=-1e6, le=1e6)]
Vec3 = Annotated[list[Coord], Field(min_length=3, max_length=3)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]

PASS_NAMES = ("beauty", "depth", "normal", "id", "seg", "motion", "occlusion")
ELEMENT_KINDS = ("column", "beam", "slab", "wall", "window", "part")
MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl")
MAX_PIECES = 100_000
MAX_PARTICLES = 10_000_000


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, validate_default=True
    )


class ShotInfo(_Section):
    name: Name = Field(
        "default", description="shot name: run folder and file prefix (letters, digits, _ . -)"
    )
    fps: float = Field(24.0, ge=1, le=1000, description="frames per second of the output [1/s]")
    frames: int = Field(120, ge=1, le=100_000, description="number of frames rendered")
    start_frame: int = Field(1001, ge=0, le=10_000_000, description="number of the first frame")
    seed: int = Field(
        0, ge=0, le=2**31 - 1, description="one seed for fracture, debris and diffusion noise"
    )


class Procedural(_Section):
    floors: int = Field(6, ge=1, le=200, description="number of storeys")
    bays_x: int = Field(3, ge=1, le=50, description="structural bays along x")
    bays_z: int = Field(2, ge=1, le=50, description="structural bays along z")
    bay: float = Field(6.0, ge=0.9, le=50, description="bay width, column centre to centre [m]")
    story: float = Field(3.5, ge=1.65, le=20, description="storey height, floor to floor [m]")
    windows: bool = Field(
        True, description="window openings with glass panes in the exterior walls"
    )
    interior_walls: bool = Field(False, description="interior partition walls")


class Building(_Section):
    procedural: Procedural | None = Field(
        None, description="procedural frame building (default when no mesh)"
    )
    mesh: str | None = Field(
        None, description="mesh file (glb, gltf, obj, ply, stl), relative to the shot file"
    )
    scale: float = Field(1.0, gt=0, le=1e4, description="mesh units to metres")
    up: Literal["y", "z"] = Field("y", description="up axis of the mesh file")
    material: str = Field("concrete", description="default material of every element")
    materials: dict[str, str] = Field(
        default_factory=dict, description="element kind -> material name"
    )

    @model_validator(mode="after")
    def _one_source(self) -> Building:
        if self.procedural is not None and self.mesh is not None:
            raise ValueError("give either building.procedural or building.mesh, not both")
        if self.procedural is None and self.mesh is None:
            self.procedural = Procedural()
        for kind in self.materials:
            if kind not in ELEMENT_KINDS:
                raise ValueError(
                    f"building.materials: unknown element kind {kind!r}; allowed: {', '.join(ELEMENT_KINDS)}"
                )
        return self


class MaterialOverride(_Section):
    base: str | None = Field(
        None, description="preset this material starts from (required for a new name)"
    )
    density: float | None = Field(None, gt=0, le=30_000, description="density [kg/m^3]")
    friction: float | None = Field(None, ge=0, le=10, description="Coulomb friction coefficient")
    restitution: float | None = Field(None, ge=0, le=1, description="coefficient of restitution")
    tensile: float | None = Field(None, gt=0, le=1e11, description="bond tensile strength [Pa]")
    shear: float | None = Field(None, gt=0, le=1e11, description="bond shear strength [Pa]")
    compressive: float | None = Field(
        None, gt=0, le=1e11, description="bond compressive strength [Pa]"
    )


class DetailPoint(_Section):
    position: Vec3 = Field(description="centre of the finer region [m]")
    radius: float = Field(gt=0, le=1e4, description="radius of the finer region [m]")
    factor: float = Field(
        3.0, gt=0, le=100, description="seed density multiplier inside the radius"
    )


class Fracture(_Section):
    pieces: int = Field(800, ge=1, le=MAX_PIECES, description="target number of pieces")
    method: Literal["voronoi"] = Field("voronoi", description="fracture method")
    seed: int | None = Field(
        None, ge=0, le=2**31 - 1, description="fracture seed (default: shot.seed)"
    )
    detail: list[DetailPoint] = Field(
        default_factory=list, description="art-directed finer regions"
    )


class Charge(_Section):
    time: float = Field(
        ge=0, description="firing time after the first frame, in simulation time [s]"
    )
    position: Vec3 = Field(description="centre [m]")
    radius: float = Field(gt=0, le=1e3, description="radius of effect [m]")
    impulse: float = Field(gt=0, le=1e9, description="total impulse at the centre [N*s]")


class Region(_Section):
    min: Vec3 = Field(description="box corner with the smallest coordinates [m]")
    max: Vec3 = Field(description="box corner with the largest coordinates [m]")
    start: float = Field(0.0, ge=0, description="time the weakening starts, simulation time [s]")
    weaken: float = Field(ge=0, le=1, description="share of bond strength removed (0..1)")

    @model_validator(mode="after")
    def _ordered(self) -> Region:
        if any(a >= b for a, b in zip(self.min, self.max)):
            raise ValueError(f"region min {self.min} must be below max {self.max} on every axis")
        return self


class ImpactorKey(_Section):
    time: float = Field(ge=0, description="simulation time [s]")
    position: Vec3 = Field(description="centre position [m]")


class Impactor(_Section):
    shape: Literal["sphere"] = Field("sphere", description="impactor shape")
    radius: float = Field(gt=0, le=1e3, description="sphere radius [m]")
    mass: float = Field(gt=0, le=1e9, description="mass [kg] (kinematic: used for impact damage)")
    keys: list[ImpactorKey] = Field(min_length=1, description="keyframes, increasing time")

    @model_validator(mode="after")
    def _sorted(self) -> Impactor:
        times = [k.time for k in self.keys]
        if times != sorted(times) or len(set(times)) != len(times):
            raise ValueError(f"impactor key times must increase strictly, got {times}")
        return self


class Sim(_Section):
    backend: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Taichi arch (auto: cuda when present)"
    )
    threads: int = Field(0, ge=0, le=1024, description="CPU threads (0 = all cores)")
    substeps: int = Field(8, ge=1, le=256, description="solver substeps per frame")
    preroll: float = Field(
        0.5, ge=0, le=60, description="settling time simulated before the first frame [s]"
    )
    time_scale: float = Field(
        1.0, ge=0.001, le=100, description="simulation seconds per shot second (<1: slow motion)"
    )
    gravity: Annotated[
        list[Annotated[float, Field(ge=-1000, le=1000)]], Field(min_length=3, max_length=3)
    ] = Field(
        [0.0, -9.81, 0.0], description="gravity [m/s^2], each component within +-1000 (100 g)"
    )
    ground: bool = Field(True, description="infinite ground plane at y = 0")
    anchor_to_ground: bool = Field(
        True, description="bond pieces resting on the ground at the start to it"
    )
    checkpoint_every: int = Field(
        10, ge=1, le=100_000, description="frames between full solver checkpoints"
    )


class Debris(_Section):
    enabled: bool = Field(True, description="emit rubble from breaking bonds")
    per_break: float = Field(
        6.0, ge=0, le=1000, description="rubble bits per m^2 of broken bond area"
    )
    dust: bool = Field(True, description="emit dust particles")
    max_particles: int = Field(
        200_000, ge=0, le=MAX_PARTICLES, description="cap on live dust particles"
    )
    max_rubble: int = Field(
        50_000, ge=0, le=MAX_PARTICLES, description="cap on live rubble bits (oldest recycled)"
    )


class CameraKey(_Section):
    frame: int = Field(description="frame number of the key")
    position: Vec3 = Field(description="camera position [m]")
    look_at: Vec3 = Field(description="point the camera looks at [m]")
    focal_mm: float | None = Field(None, gt=1, le=2000, description="focal length [mm]")


class Camera(_Section):
    position: Vec3 = Field([38.0, 14.0, 46.0], description="camera position [m]")
    look_at: Vec3 = Field([9.0, 9.0, 6.0], description="point the camera looks at [m]")
    focal_mm: float = Field(35.0, gt=1, le=2000, description="focal length [mm]")
    sensor_mm: float = Field(36.0, gt=1, le=100, description="sensor width [mm]")
    resolution: Annotated[list[int], Field(min_length=2, max_length=2)] = Field(
        [1280, 720], description="image width and height [px], multiples of 8"
    )
    keys: list[CameraKey] = Field(
        default_factory=list, description="keyframes, interpolated between"
    )
    shake: float = Field(0.0, ge=0, le=10, description="shake amplitude driven by the charges [m]")
    usd: str | None = Field(
        None,
        description="matchmoved USD camera (replaces position/look_at/keys), relative to the shot file",
    )
    usd_prim: str | None = Field(
        None, description="prim path of the camera in `usd` (default: the first camera)"
    )

    @model_validator(mode="after")
    def _check(self) -> Camera:
        for w in self.resolution:
            if w < 8 or w > 8192 or w % 8:
                raise ValueError(
                    f"camera.resolution {self.resolution}: each must be a multiple of 8 in 8..8192"
                )
        poses = [(self.position, self.look_at)] + [(k.position, k.look_at) for k in self.keys]
        for p, t in poses:
            if math.dist(p, t) < 1e-6:
                raise ValueError(f"camera look_at {t} must differ from its position {p}")
        frames = [k.frame for k in self.keys]
        if frames != sorted(set(frames)):
            raise ValueError(f"camera key frames must increase strictly, got {frames}")
        return self


class Render(_Section):
    passes: list[Literal["beauty", "depth", "normal", "id", "seg", "motion", "occlusion"]] = Field(
        list(PASS_NAMES), description="passes to write"
    )
    exr: bool = Field(True, description="write the multi-layer EXR per frame")
    exr_compression: Literal["zip", "zips", "piz", "rle", "zstd", "none"] = Field(
        "zip",
        description="the EXR's lossless codec: zip (every reader), zips, piz, rle (faster, 3x "
        "larger), zstd (fastest and smallest; readers need OpenEXR 3.5 or newer), none",
    )
    png: bool = Field(True, description="write the ControlNet-ready PNGs per frame")
    plate: str | None = Field(
        None, description="background plate, #### = frame number, relative to the shot file"
    )

    @model_validator(mode="after")
    def _writes_something(self) -> Render:
        if not self.passes:
            raise ValueError(f"render.passes is empty; name some of: {', '.join(PASS_NAMES)}")
        if not (self.exr or self.png):
            raise ValueError(
                "render.exr and render.png are both false: the render stage would write nothing; "
                "set one of them true"
            )
        if self.exr and set(self.passes) <= {"seg"}:
            raise ValueError(
                "render.passes = ['seg'] has no layer for the EXR (seg is written as a PNG only); "
                "add a pass or set render.exr = false"
            )
        return self


class ControlNetSpec(_Section):
    kind: Literal["depth", "normal", "seg"] = Field(
        description="which pass conditions this ControlNet"
    )
    model: str = Field(description="local folder or Hub repo id (local cache only)")
    scale: float = Field(1.0, ge=0, le=10, description="conditioning scale")


class Temporal(_Section):
    noise_warp: bool = Field(True, description="carry noise along the exact motion")
    cross_frame: bool = Field(
        True, description="cross-frame attention with the window's anchor frame"
    )
    fusion: bool = Field(
        True, description="blend the warped previous refined frame early in the schedule"
    )
    window: int = Field(16, ge=1, le=10_000, description="frames per window")
    overlap: int = Field(4, ge=0, le=10_000, description="frames shared by neighbouring windows")

    @model_validator(mode="after")
    def _overlap(self) -> Temporal:
        if self.overlap >= self.window:
            raise ValueError(
                f"refine.temporal.overlap ({self.overlap}) must be below window ({self.window})"
            )
        return self


def _default_controlnets() -> list[ControlNetSpec]:
    return [
        ControlNetSpec(kind="depth", model="lllyasviel/control_v11f1p_sd15_depth", scale=1.0),
        ControlNetSpec(kind="normal", model="lllyasviel/control_v11p_sd15_normalbae", scale=0.6),
        ControlNetSpec(kind="seg", model="lllyasviel/control_v11p_sd15_seg", scale=0.4),
    ]


class Refine(_Section):
    enabled: bool = Field(True, description="run the diffusion refine stage")
    model: str = Field(
        "stable-diffusion-v1-5/stable-diffusion-v1-5", description="local folder or Hub repo id"
    )
    controlnets: list[ControlNetSpec] = Field(
        default_factory=_default_controlnets,
        min_length=1,
        description="ControlNets (at least one: the passes are what keeps diffusion to the simulation)",
    )
    prompt: str = Field(
        "photograph of a concrete building collapsing, dust clouds, debris, overcast daylight, 35mm film",
        description="text prompt",
    )
    negative_prompt: str = Field(
        "cartoon, render, cgi, blurry, lowres", description="negative prompt"
    )
    strength: float = Field(
        0.6, gt=0, le=1, description="img2img strength (share of the schedule run)"
    )
    steps: int = Field(20, ge=1, le=1000, description="denoising steps")
    guidance: float = Field(7.0, ge=0, le=50, description="classifier-free guidance scale")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="torch device (auto: cuda when present)"
    )
    cpu_offload: bool = Field(
        False, description="keep idle model parts in host memory (small GPUs)"
    )
    vae_tiling: bool = Field(
        False, description="decode the VAE in tiles (large frames on small GPUs)"
    )
    temporal: Temporal = Field(default_factory=Temporal, description="temporal consistency")


class Output(_Section):
    dir: str | None = Field(
        None, description="run folder, relative to the current directory (default renders/<name>)"
    )
    usd: bool = Field(False, description="also write scene.usdc after simulate")


class Shot(_Section):
    """A whole shot. ``base_dir`` is the shot file's folder (paths resolve against it)."""

    shot: ShotInfo = Field(default_factory=ShotInfo)
    building: Building = Field(default_factory=Building)
    materials: dict[str, MaterialOverride] = Field(default_factory=dict)
    fracture: Fracture = Field(default_factory=Fracture)
    charges: list[Charge] = Field(default_factory=list, max_length=1000)
    regions: list[Region] = Field(default_factory=list, max_length=1000)
    impactors: list[Impactor] = Field(default_factory=list, max_length=100)
    sim: Sim = Field(default_factory=Sim)
    debris: Debris = Field(default_factory=Debris)
    camera: Camera = Field(default_factory=Camera)
    render: Render = Field(default_factory=Render)
    refine: Refine = Field(default_factory=Refine)
    output: Output = Field(default_factory=Output)

    @field_validator("materials")
    @classmethod
    def _material_overrides(cls, v: dict[str, MaterialOverride]) -> dict[str, MaterialOverride]:
        from destruct.materials import MATERIAL_NAMES

        for name, o in v.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ValueError(f"material name {name!r} must be lower-case letters, digits and _")
            if name not in MATERIAL_NAMES and o.base is None:
                raise ValueError(
                    f"materials.{name} is not a preset ({', '.join(MATERIAL_NAMES)}): give it a base preset"
                )
            if o.base is not None and o.base not in MATERIAL_NAMES:
                raise ValueError(
                    f"materials.{name}.base {o.base!r} is unknown; allowed: {', '.join(MATERIAL_NAMES)}"
                )
        return v

    @model_validator(mode="after")
    def _cross(self) -> Shot:
        from destruct.materials import MATERIAL_NAMES

        known = set(MATERIAL_NAMES) | set(self.materials)
        used = {"building.material": self.building.material}
        used.update({f"building.materials.{k}": m for k, m in self.building.materials.items()})
        for key, m in used.items():
            if m not in known:
                raise ValueError(
                    f"{key} = {m!r} is not a known material; allowed: {', '.join(sorted(known))}"
                )
        duration = self.duration
        for i, c in enumerate(self.charges):
            if c.time > duration:
                raise ValueError(
                    f"charges[{i}].time = {c.time} s is after the shot's end ({duration:.3f} s of simulation "
                    f"= frames / fps * time_scale)"
                )
        return self

    @property
    def duration(self) -> float:
        """Simulated seconds covered by the frames (preroll not counted)."""
        return self.shot.frames / self.shot.fps * self.sim.time_scale

    def frame_numbers(self) -> list[int]:
        s = self.shot.start_frame
        return list(range(s, s + self.shot.frames))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def hash(self, *sections: str) -> str:
        """sha256 of the canonical JSON of the whole shot, or of some sections only."""
        d = self.to_dict()
        if sections:
            d = {k: d.get(k) for k in sections}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = str(part)
            shown = name if name.isprintable() and name and "." not in name else repr(name)
            out += ("." if out else "") + shown
    return out


def _error_lines(err: ValidationError, source: str) -> list[str]:
    """One line per problem: where, the value, and what is allowed."""
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = _loc(loc)
        kind = e["type"]
        if kind == "extra_forbidden":
            parent, name = loc[:-1], loc[-1]
            where = f"[{_loc(parent)}]" if parent else "the top level"
            allowed = _allowed_keys(parent)
            msg = f"unknown key {name!r} in {where}" + (
                f"; allowed: {', '.join(allowed)}" if allowed else ""
            )
        elif kind == "value_error":
            msg = str(e["msg"]).removeprefix("Value error, ")
            msg = f"{key}: {msg}" if key else msg
        elif kind == "missing":
            msg = f"{key}: required key is missing"
        else:
            value = e.get("input")
            shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
            text = str(e["msg"])
            msg = f"{key} = {shown}: {text[:1].lower()}{text[1:]}"
        lines.append(f"{source}: {_one_line(msg)}")
    return lines


def _one_line(text: str) -> str:
    """Escape control characters (a key may hold any), so one problem stays on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Shot
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_of(field.annotation)
    return list(model.model_fields) if model is not None else []


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        m = _model_of(arg)
        if m is not None:
            return m
    return None


def shot_from_dict(
    data: dict[str, Any], base_dir: str | Path = ".", source: str = "shot", *, files: bool = True
) -> Shot:
    """Validate a shot dictionary; paths resolve against ``base_dir`` and, with ``files``, must
    exist (a run folder's own shot.toml is read with files=False: what it names may have moved
    since, and its readers need only the run's caches). Raises UserError."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: a shot is a table of sections, got {type(data).__name__}")
    try:
        shot = Shot.model_validate(data)
    except ValidationError as e:
        raise UserError("\n".join(_error_lines(e, source))) from None
    if files:
        _resolve_paths(shot, Path(base_dir), source)
    return shot


def load_shot(path: str | Path, *, files: bool = True) -> Shot:
    """Read and validate a shot TOML file (DESIGN.md section 4); ``files``: see
    :func:`shot_from_dict`. Raises UserError."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark (Windows editors) is fine
    except FileNotFoundError:
        raise UserError(f"shot file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"shot file {path} is a folder; give the .toml file") from None
    except UnicodeDecodeError:
        raise UserError(f"shot file {path} is not UTF-8 text") from None
    except OSError as e:
        raise UserError(f"cannot read shot file {path}: {e.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None
    return shot_from_dict(data, path.resolve().parent, str(path), files=files)


def _resolve_paths(shot: Shot, base: Path, source: str) -> None:
    """Resolve every path the shot names against its folder and check it (DESIGN.md section 3)."""
    b = shot.building
    if b.mesh is not None:
        p = _resolve_file(base, b.mesh, "building.mesh", source)
        if p.suffix.lower() not in MESH_SUFFIXES:
            raise UserError(
                f"{source}: building.mesh = {b.mesh!r}: unsupported type {p.suffix!r}; use one of {', '.join(MESH_SUFFIXES)}"
            )
        b.mesh = str(p)
    if shot.camera.usd is not None:
        shot.camera.usd = str(_resolve_file(base, shot.camera.usd, "camera.usd", source))
    if shot.render.plate is not None:
        pattern = shot.render.plate
        if "#" not in pattern:
            raise UserError(
                f"{source}: render.plate = {pattern!r}: put #### where the frame number goes"
            )
        first = re.sub(r"#+", lambda m: f"{shot.shot.start_frame:0{len(m.group())}d}", pattern)
        _resolve_file(base, first, "render.plate (first frame)", source)
        shot.render.plate = str(_resolve(base, pattern, "render.plate", source))
    for i, spec in enumerate(shot.refine.controlnets):
        spec.model = _model_ref(base, spec.model, f"refine.controlnets[{i}].model", source)
    shot.refine.model = _model_ref(base, shot.refine.model, "refine.model", source)
    if shot.output.dir:  # resolved against the current folder when the run starts
        _check_path_text(shot.output.dir, "output.dir", source)


#: the longest path and file name Linux takes (PATH_MAX, NAME_MAX)
PATH_MAX, NAME_MAX = 4096, 255


def _check_path_text(raw: str, key: str, source: str) -> None:
    """A path the OS could not even look up (a NUL byte, a name over NAME_MAX bytes) is the
    shot's mistake, said as such, not an exception from the first file call."""
    if "\0" in raw:
        raise UserError(f"{source}: {key} = {raw!r} holds a NUL character; give a plain path")
    longest = max((len(part.encode()) for part in Path(raw).parts), default=0)
    if len(raw.encode()) >= PATH_MAX or longest > NAME_MAX:
        raise UserError(
            f"{source}: {key} = {raw[:40]!r}... is too long for a path (at most {NAME_MAX} bytes a "
            f"name, {PATH_MAX} in all)"
        )


def _resolve(base: Path, raw: str, key: str, source: str) -> Path:
    _check_path_text(raw, key, source)
    try:
        return (base / Path(raw).expanduser()).resolve(strict=False)
    except (OSError, RuntimeError) as e:
        raise UserError(
            f"{source}: {key} = {raw!r} cannot be resolved ({e}); a symlink loop?"
        ) from None


def _resolve_file(base: Path, raw: str, key: str, source: str) -> Path:
    p = _resolve(base, raw, key, source)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UserError(
            f"{source}: {key} = {raw!r}: no such file ({p}); paths are relative to the shot file's folder"
        ) from None
    except OSError as e:
        raise UserError(f"{source}: {key} = {raw!r}: cannot read {p} ({e.strerror})") from None
    import stat

    if not stat.S_ISREG(st.st_mode):
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise UserError(f"{source}: {key} = {raw!r}: {p} is {what}; give a file")
    return p


def _model_ref(base: Path, raw: str, key: str, source: str) -> str:
    """A local folder (resolved, must exist) or a Hub repo id ``org/name`` (looked up in the cache later)."""
    _check_path_text(raw, key, source)
    looks_local = raw.startswith((".", "/", "~")) or raw.count("/") != 1
    if not looks_local and not (base / raw).exists():
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", raw):
            raise UserError(
                f"{source}: {key} = {raw!r} is neither a local folder nor a Hub repo id 'org/name'"
            )
        return raw
    p = _resolve(base, raw, key, source)
    if p.is_file():  # a single checkpoint file: pickled ones can run code, others need a folder
        from refine.models import PICKLED_SUFFIXES  # light: no diffusers, no torch

        pickled = p.suffix.lower() in PICKLED_SUFFIXES
        raise UserError(
            f"{source}: {key} = {raw!r} is a {'pickled ' if pickled else ''}weights file; give a "
            "diffusers model folder with safetensors weights"
            + (" (pickled weights are refused: loading them can run code)" if pickled else "")
        )
    if not p.is_dir():
        raise UserError(f"{source}: {key} = {raw!r}: no model folder at {p}")
    return str(p)

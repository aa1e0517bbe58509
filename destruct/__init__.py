"""destruct: physics-guided building destruction with an AI refinement stage.

``import destruct`` stays light: taichi, torch, diffusers and pyrender load inside the stage
that needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from destruct.errors import DestructError, StageNotBuilt, UserError
from destruct.shot import Shot, load_shot, shot_from_dict

if TYPE_CHECKING:
    from destruct.pipeline import RunResult

__version__ = "0.1.0"
__all__ = [
    "DestructError",
    "Shot",
    "StageNotBuilt",
    "UserError",
    "default_shot_path",
    "load_shot",
    "prepare",
    "run",
    "shot_from_dict",
]


def default_shot_path() -> Path:
    """The bundled default shot (works from a checkout and from an installed wheel)."""
    from importlib.resources import files

    return Path(str(files("destruct.assets") / "shots" / "default.toml"))


def prepare(shot: Shot) -> Any:
    """Fracture the shot's building in memory: a Scene with .pieces, .bonds, .input_volume."""
    from destruct.fracture import prepare as _prepare

    if not isinstance(shot, Shot):
        raise TypeError(f"prepare: shot is a {type(shot).__name__}; give destruct.load_shot(path)")
    return _prepare(shot)


def run(shot: Shot, out: str | Path | None = None, stages: Any = None, **kwargs: Any) -> RunResult:
    """Run the pipeline, same as ``destruct run`` (see :func:`destruct.pipeline.run`)."""
    from destruct.pipeline import run as _run

    return _run(shot, out, stages, **kwargs)

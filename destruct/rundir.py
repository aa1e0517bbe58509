"""The run directory and its manifest (DESIGN.md section 2).

``manifest.json`` records the shot hash, package versions, backend, seed and, per stage, its
status (done / skipped / failed), reason, inputs hash, seconds, frames done and figures. Every
update happens under a file lock and re-reads the file first, so two ``--frames`` ranges can
run at once on one run directory.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from destruct.errors import UserError
from destruct.io import load_json, save_json

MANIFEST_FORMAT = "destruct.manifest/1"
#: what to do about a manifest that does not read (RunDir.set_aside_damaged)
DAMAGED_FIX = (
    "run the same command with --force to start the run folder's record over (the damaged "
    "manifest is kept as manifest.json.damaged)"
)


class RunDir:
    """A run directory: paths inside it and locked manifest updates."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.manifest_path = self.root / "manifest.json"
        self._lock = FileLock(str(self.root / ".manifest.lock"), timeout=120)

    def path(self, *parts: str) -> Path:
        """``root / parts``, with the parent folder created."""
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def check_writable_target(self) -> None:
        """Refuse to write into a non-empty folder that holds no destruct manifest."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"output {self.root} exists and is not a folder; choose another --out")
        if self.root.is_dir() and any(self.root.iterdir()) and not self.manifest_path.exists():
            raise UserError(
                f"output folder {self.root} is not empty and holds no destruct manifest; "
                "destruct never writes into it: choose an empty or new --out folder"
            )

    def create(self) -> None:
        """Create the folder; an unwritable location is a UserError naming the fix."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(
                f"cannot create the run folder {self.root}: {e.strerror}; choose a writable --out folder"
            ) from None

    def read(self) -> dict[str, Any]:
        """The manifest, or an empty one when none exists yet."""
        if not self.manifest_path.exists():
            return {"format": MANIFEST_FORMAT, "stages": {}}
        m = load_json(self.manifest_path, MANIFEST_FORMAT, fix=DAMAGED_FIX)
        problem = _manifest_problem(m)
        if problem:
            raise UserError(f"{self.manifest_path} is damaged ({problem}); {DAMAGED_FIX}")
        return m

    def set_aside_damaged(self) -> Path | None:
        """For --force: a manifest that does not read is renamed ``manifest.json.damaged``, so the
        run starts a new one (every stage runs again anyway). Returns the new name, or None when
        the manifest reads or there is none."""
        try:
            self.read()
        except UserError:
            kept = self.manifest_path.with_name("manifest.json.damaged")
            self.manifest_path.replace(kept)
            return kept
        return None

    @contextlib.contextmanager
    def update(self) -> Iterator[dict[str, Any]]:
        """Lock, read, let the caller edit, write atomically."""
        self.create()
        try:
            self._lock.acquire()
        except OSError as e:
            raise UserError(
                f"cannot lock {self.manifest_path}: {e.strerror}; choose a writable --out folder"
            ) from None
        try:
            m = self.read()
            yield m
            m["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            save_json(self.manifest_path, m)
        finally:
            self._lock.release()

    def stage(self, name: str) -> dict[str, Any]:
        """The manifest entry of one stage (empty dict when it never ran)."""
        return self.read().get("stages", {}).get(name, {})


def _manifest_problem(m: dict) -> str:
    """What is wrong with the shape of a manifest (a hand edit gone wrong), or ''."""
    stages = m.get("stages", {})
    if not isinstance(stages, dict):
        return f"'stages' is a {type(stages).__name__}, not an object"
    for name, e in stages.items():
        if not isinstance(e, dict):
            return f"stages.{name} is a {type(e).__name__}, not an object"
        done = e.get("frames_done", [])
        if not isinstance(done, list) or not all(
            isinstance(f, int) and not isinstance(f, bool) for f in done
        ):
            return f"stages.{name}.frames_done is not a list of frame numbers"
        if not isinstance(e.get("figures", {}), dict):
            return f"stages.{name}.figures is not an object"
        if not isinstance(e.get("status", ""), str):
            return f"stages.{name}.status is not a string"
    return ""

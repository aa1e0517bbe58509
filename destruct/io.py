"""Atomic, versioned artifact I/O (docs/FORMATS.md).

Every file is written to a temporary name in the same folder and renamed over the target, so a
killed run never leaves a half-written file that a later run trusts. Readers check the
``format`` label and refuse an unknown format or version with a clear message.
"""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from destruct.errors import UserError, first_line

TMP_PREFIX = ".tmp-"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file + fsync + rename. Returns the path.

    A full disk or an unwritable folder is a UserError; the target keeps its old content and no
    temp file is left behind.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            _unlink_quietly(tmp)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(
                f"disk full while writing {path}: free some space (df -h {path.parent}) and run "
                "again; files already written are intact"
            ) from None
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UserError(
                f"cannot write {path}: {e.strerror}; choose a writable --out folder"
            ) from None
        raise
    except BaseException:
        if tmp is not None:
            _unlink_quietly(tmp)
        raise
    return path


def temp_prefix(name: str) -> str:
    """The name a temp file for ``name`` starts with: ``.tmp-<name>~<host>~<pid>~``, so
    :func:`remove_stale_temps` can tell a killed writer's file from a live one's."""
    return f"{TMP_PREFIX}{name}~{socket.gethostname()}~{os.getpid()}~"


def this_process() -> dict[str, Any]:
    """Host name, PID and start time of this process, as a run records its owner
    (:func:`process_alive`)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid())}


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot, /proc/<pid>/stat field 22), so a
    PID the system has since given to another process is told apart; None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # fields after "(comm)" start at field 3


def process_alive(host: object, pid: object, started: object = None) -> bool | None:
    """Whether process ``pid`` of ``host`` (started at ``started``, :func:`this_process`) still
    runs; None when that cannot be told: another host (a farm node), or not a host name and a
    PID (an old or hand-edited record)."""
    if host != socket.gethostname() or type(pid) is not int or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, another user's
        pass
    now = _start_time(pid) if type(started) is int else None
    return now is None or now == started


def _writer_is_gone(p: Path) -> bool:
    """True when ``p`` was made on this host by a process that no longer runs."""
    parts = p.name.split("~")
    return (
        len(parts) >= 4
        and parts[-2].isdigit()
        and process_alive(parts[-3], int(parts[-2])) is False
    )


def _unlink_quietly(p: str | os.PathLike) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def format_label(kind: str, version: int) -> str:
    """``("sim", 1)`` -> ``"destruct.sim/1"``."""
    return f"destruct.{kind}/{version}"


def check_format(found: Any, expected: str, path: Path) -> None:
    """Refuse a file whose format label is not ``expected`` (an unknown kind or version)."""
    found = str(found)
    if found == expected:
        return
    kind = expected.rsplit("/", 1)[0]
    if found.rsplit("/", 1)[0] == kind:
        raise UserError(
            f"{path}: format {found!r} is not readable by this destruct (it reads {expected!r}); "
            "re-run the stage that wrote it with --force, or use the destruct version that wrote it"
        )
    raise UserError(
        f"{path}: expected a {expected!r} file, found format {found!r}; re-run the stage that "
        "writes it with --force"
    )


def save_npz(path: str | os.PathLike, format: str, **arrays: Any) -> Path:
    """Save arrays (no object arrays) plus the ``format`` label, atomically, uncompressed."""
    buf = io.BytesIO()
    for k, v in arrays.items():
        if np.asarray(v).dtype == object:
            raise TypeError(f"array {k!r} has dtype object; store strings as a unicode array")
    np.savez(buf, format=np.array(format), **arrays)
    return atomic_write_bytes(path, buf.getvalue())


class Arrays(dict):
    """An npz's arrays; a missing one is a UserError naming the file (a file of the right
    format label whose arrays were tampered with, or an older writer's), not a KeyError."""

    def __init__(self, data: dict[str, np.ndarray], path: Path):
        super().__init__(data)
        self.path = path

    def __missing__(self, key: str) -> np.ndarray:
        raise UserError(
            f"{self.path} lacks the array {key!r}; re-run the stage that writes it with --force"
        )


def load_npz(path: str | os.PathLike, format: str) -> Arrays:
    """Load every array of an npz written by :func:`save_npz` and check its format label."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing: run the stage that writes it first")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        # numpy's own advice for a file that is not an npz ("allow_pickle=") is not ours to give
        why = "not an npz archive" if "pickle" in str(e) else str(e)
        raise UserError(
            f"{path} is unreadable ({why}); re-run the stage that writes it with --force"
        ) from None
    check_format(data.pop("format", "unlabelled"), format, path)
    return Arrays(data, path)


def read_image(path: str | os.PathLike, fix: str) -> np.ndarray:
    """An image file's pixels (imageio). A file that does not decode (cut short, not an image)
    is a UserError naming it and ``fix``."""
    import imageio.v3 as iio

    try:
        return np.asarray(iio.imread(path))
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # a broken PNG: SyntaxError
        raise UserError(f"{path} is not a readable image ({first_line(e)}); {fix}") from None


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False, default=_json_default)
    return atomic_write_bytes(path, (text + "\n").encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_json(path: str | os.PathLike, format: str | None = None, *, fix: str = "") -> Any:
    """Read JSON; with ``format``, check the object's ``"format"`` label. ``fix``: what the
    message for a file that is not JSON tells the user to do."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(), parse_constant=_no_constant)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: run the stage that writes it first") from None
    except RecursionError:
        raise UserError(
            f"{path} is not valid JSON (nested too deeply){'; ' + fix if fix else ''}"
        ) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}){'; ' + fix if fix else ''}") from None
    if format is not None:
        check_format(
            obj.get("format", "unlabelled") if isinstance(obj, dict) else "unlabelled", format, path
        )
    return obj


def _no_constant(name: str) -> None:
    """JSON has no NaN or Infinity (destruct never writes them: save_json refuses them)."""
    raise ValueError(f"{name} is not a JSON value")


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a uint8 (h, w), (h, w, 3) or (h, w, 4) image, or a uint16 (h, w) one, as PNG."""
    import imageio.v3 as iio

    return atomic_write_bytes(
        path, iio.imwrite("<bytes>", np.ascontiguousarray(image), extension=".png")
    )


#: a temp file of another host untouched this long was left by a killed run
STALE_SECONDS = 3600.0


def remove_stale_temps(folder: str | os.PathLike, *, older_than: float = STALE_SECONDS) -> int:
    """Delete temp files a killed run left behind under ``folder``: those whose writer on this
    host no longer runs (:func:`temp_prefix`), and any not modified for ``older_than``
    seconds. Another live process's write in progress (farm chunks share a run folder) is
    left alone. Returns how many."""
    import time

    n, now = 0, time.time()
    for p in Path(folder).rglob(TMP_PREFIX + "*"):
        try:
            stale = p.is_file() and (_writer_is_gone(p) or now - p.stat().st_mtime > older_than)
        except OSError:  # renamed or removed by its writer meanwhile
            continue
        if stale:
            _unlink_quietly(p)
            n += 1
    return n

"""Atomic, versioned artifact I/O."""

from __future__ import annotations

import os

import numpy as np
import pytest

from destruct.errors import UserError
from destruct.io import TMP_PREFIX, load_json, load_npz, remove_stale_temps, save_json, save_npz


def test_npz_round_trip_is_exact_and_labelled(tmp_path):
    a = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    names = np.array(["column_00.piece_0000", "slab_01.piece_0001"])
    save_npz(tmp_path / "x.npz", "destruct.sim/1", a=a, names=names)
    d = load_npz(tmp_path / "x.npz", "destruct.sim/1")
    assert np.array_equal(d["a"], a) and d["a"].dtype == np.float32
    assert d["names"].tolist() == names.tolist() and "format" not in d
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_unknown_version_and_kind_are_refused(tmp_path):
    save_npz(tmp_path / "x.npz", "destruct.sim/9", a=np.zeros(1))
    with pytest.raises(UserError, match="format 'destruct.sim/9' is not readable"):
        load_npz(tmp_path / "x.npz", "destruct.sim/1")
    with pytest.raises(UserError, match="expected a 'destruct.pieces/1' file"):
        load_npz(tmp_path / "x.npz", "destruct.pieces/1")
    with pytest.raises(UserError, match="is missing"):
        load_npz(tmp_path / "nope.npz", "destruct.sim/1")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(UserError, match="unreadable"):
        load_npz(tmp_path / "bad.npz", "destruct.sim/1")


def test_object_arrays_are_never_written(tmp_path):
    with pytest.raises(TypeError, match="dtype object"):
        save_npz(tmp_path / "x.npz", "destruct.sim/1", a=np.array([{"a": 1}], dtype=object))
    assert not (tmp_path / "x.npz").exists()


def test_json_round_trip_and_stale_temps(tmp_path):
    save_json(tmp_path / "f.json", {"format": "destruct.fracture/1", "n": np.int64(3)})
    assert load_json(tmp_path / "f.json", "destruct.fracture/1")["n"] == 3
    import socket
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    host = socket.gethostname()
    killed = tmp_path / f"{TMP_PREFIX}f.json~{host}~{int(dead.stdout)}~abc"  # its writer is gone
    live = tmp_path / f"{TMP_PREFIX}g.exr~{host}~{os.getpid()}~def"  # this process writes it
    remote = tmp_path / f"{TMP_PREFIX}h.png~another-host~1~ghi"  # a farm node's, in progress
    old = tmp_path / f"{TMP_PREFIX}i.png~another-host~1~jkl"  # a farm node's, untouched 2 h
    for p in (killed, live, remote, old):
        p.write_text("half")
    two_hours_ago = old.stat().st_mtime - 2 * 3600
    os.utime(old, (two_hours_ago, two_hours_ago))
    assert remove_stale_temps(tmp_path) == 2
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, remote.name, "f.json"])


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "text"])
def test_damaged_npz_is_one_user_error(tmp_path, damage):
    """A cut-short file, a flipped byte (CRC mismatch) or a file that is not an npz: a
    UserError naming the file and the fix, never zipfile's exception or numpy's pickle hint."""
    path = save_npz(tmp_path / "a.npz", "destruct.sim/1", x=np.arange(1000.0))
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped byte":
        data[len(data) // 3] ^= 0xFF
    else:
        data = bytearray(b"garbage, not an archive")
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="a.npz is unreadable") as e:
        load_npz(path, "destruct.sim/1")
    assert "--force" in str(e.value) and "pickle" not in str(e.value)


def test_a_missing_array_is_a_user_error_naming_the_file(tmp_path):
    path = save_npz(tmp_path / "frame.npz", "destruct.sim/1", position=np.zeros((2, 3)))
    d = load_npz(path, "destruct.sim/1")
    assert d["position"].shape == (2, 3) and d.get("velocity") is None
    with pytest.raises(UserError, match="frame.npz lacks the array 'velocity'.*--force"):
        d["velocity"]

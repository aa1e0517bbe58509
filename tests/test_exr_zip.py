"""destruct's ZIP / ZIPS EXR encoder against OpenEXR: the same header bytes, exact pixels."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from destruct.render import exr_zip
from destruct.render.exr import REC709_CHROMATICITIES, read_exr, read_exr_header

BINDING = {"zip": "ZIP_COMPRESSION", "zips": "ZIPS_COMPRESSION"}


def _channels(h: int, w: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(h * w)
    flat = np.zeros((h, w), np.float32)
    flat[h // 3 :, : w // 2] = 7.25  # long runs: the chunks compress
    return {
        "R": rng.random((h, w)).astype(np.float16),
        "depth.Z": np.where(rng.random((h, w)) > 0.5, np.inf, flat).astype(np.float32),
        "id": rng.integers(0, 2**32 - 1, (h, w), dtype=np.uint32),
        "N.X": np.full((h, w), -0.5, np.float16),
        "occlusion.Y": np.zeros((h, w), np.float16),
    }


def _header_end(data: bytes) -> int:
    """Offset just past the header's attribute list (magic, version, attributes, NUL)."""
    i = 8
    while data[i] != 0:
        i = data.index(b"\0", data.index(b"\0", i) + 1) + 1  # past name and type
        i += 4 + struct.unpack_from("<i", data, i)[0]
    return i + 1


def _by_openexr(channels, compression: str, attributes: dict) -> bytes:
    import OpenEXR

    header = {
        "compression": getattr(OpenEXR, BINDING[compression]),
        "type": OpenEXR.scanlineimage,
        "chromaticities": REC709_CHROMATICITIES,
        **attributes,
    }
    buf = io.BytesIO()
    OpenEXR.File(header, dict(channels)).write(buf)  # the binding replaces the dict's arrays
    return buf.getvalue()


@pytest.mark.parametrize("compression", sorted(exr_zip.CODES))
@pytest.mark.parametrize("size", [(40, 24), (37, 33), (1, 3)])
def test_same_header_as_openexr_and_exact_pixels(tmp_path, compression, size):
    """Odd sizes: a last chunk of fewer lines (37 = 2 x 16 + 5), odd rows of half pixels."""
    channels = _channels(*size)
    attributes = {
        "cryptomatte/3ae39a5/name": "CryptoObject",
        "destruct/frame": "1001",
        "a_name_longer_than_thirty_one_bytes": "sets the long-names bit",
        "n": 3,
        "x": 0.5,
    }
    ours = exr_zip.encode(
        channels,
        compression=compression,
        chromaticities=REC709_CHROMATICITIES,
        attributes=attributes,
    )
    theirs = _by_openexr(channels, compression, attributes)
    end = _header_end(theirs)
    assert ours[:end] == theirs[:end]
    (tmp_path / "a.exr").write_bytes(ours)
    back = read_exr(tmp_path / "a.exr")
    assert set(back) == set(channels)
    for name, a in channels.items():
        assert back[name].dtype == a.dtype
        np.testing.assert_array_equal(back[name].view(np.uint8), a.view(np.uint8))  # inf, bits
    assert read_exr_header(tmp_path / "a.exr")["destruct/frame"] == "1001"


def test_a_chunk_that_does_not_compress_is_stored_raw(tmp_path):
    """The format's rule: where the zlib stream is no smaller than the chunk, the raw bytes."""
    rng = np.random.default_rng(1)
    h, w = 32, 40
    noise = {"id": rng.integers(0, 2**32 - 1, (h, w), dtype=np.uint32)}
    data = exr_zip.encode(noise)
    end = _header_end(data)
    n_chunks = 2  # 16 lines each
    assert len(data) == end + 8 * n_chunks + n_chunks * (8 + 16 * w * 4)
    (tmp_path / "a.exr").write_bytes(data)
    np.testing.assert_array_equal(read_exr(tmp_path / "a.exr")["id"], noise["id"])


def test_compressible_frames_are_near_openexr_size():
    """ZIP of flat passes: within 10 % of OpenEXR's own ZIP (ISA-L against libdeflate)."""
    h, w = 64, 96
    yy, xx = np.mgrid[:h, :w]
    channels = {
        "depth.Z": (10 + yy // 8).astype(np.float32),
        "id": (1 + xx // 12 + 8 * (yy // 16)).astype(np.uint32),
        "N.Z": np.ones((h, w), np.float16),
    }
    ours = len(exr_zip.encode(channels, chromaticities=REC709_CHROMATICITIES))
    theirs = len(_by_openexr(channels, "zip", {}))
    raw = sum(a.nbytes for a in channels.values())
    assert ours < raw / 10
    assert ours <= 1.1 * theirs


def test_non_string_attribute_values():
    data = exr_zip.encode({"R": np.zeros((2, 2), np.float16)}, attributes={"n": 3, "x": 0.5})
    assert b"n\0int\0\x04\0\0\0\x03\0\0\0" in data
    assert b"x\0float\0\x04\0\0\0" + struct.pack("<f", 0.5) in data
    with pytest.raises(TypeError, match="only strings and numbers"):
        exr_zip.encode({"R": np.zeros((2, 2), np.float16)}, attributes={"b": [1, 2]})

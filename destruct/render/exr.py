"""Multi-layer EXR frames (DESIGN.md section 3), written atomically.

Channel names: ``R,G,B,A`` (half, scene-linear beauty), ``depth.Z`` (float, metres, background
inf), ``N.X,N.Y,N.Z`` (half), ``motion.X,motion.Y``, ``back.X,back.Y`` (float), ``occlusion.Y`` (half), ``id``
(uint32) and the Cryptomatte layer (:mod:`destruct.render.cryptomatte`). The header says the
pixels are scene-linear Rec.709 (``chromaticities``). The pixel type of each channel follows
the array's dtype: float16 -> HALF, float32 -> FLOAT, uint32 -> UINT.

The codec is lossless (``compression``, the shot's ``render.exr_compression``): ZIP by default,
of the codecs every EXR reader knows the smallest. ZIP and ZIPS are encoded by
:mod:`destruct.render.exr_zip` (numba and ISA-L), the others by OpenEXR. On a 2000-piece
1280x720 frame (26 channels, 81 MB raw), one thread, CPU ms and MB (the ms move with the
machine's day, up to 2.5x): zip 95-105 / 7.1 (OpenEXR's own ZIP encoder 550-640 / 6.8), zips
160 / 7.1, piz 515 / 12.2, rle 275 / 16.4, zstd 255 / 5.0, none 100 / 81. ZSTD needs OpenEXR
3.5+ readers (its first release with ZSTD), which compositing packages mostly do not have yet.
The lossy codecs (PXR24, B44, DWA) are not offered: the id, depth and motion must read back
exactly. The render stage lets OpenEXR compress the others on two threads.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from destruct.errors import UserError
from destruct.io import atomic_write_bytes

#: ``render.exr_compression`` -> the binding's name of the codec.
CODECS = {
    "zip": "ZIP_COMPRESSION",
    "zips": "ZIPS_COMPRESSION",
    "piz": "PIZ_COMPRESSION",
    "rle": "RLE_COMPRESSION",
    "zstd": "ZSTD_COMPRESSION",
    "none": "NO_COMPRESSION",
}
#: Rec.709 / sRGB primaries and D65 white: red xy, green xy, blue xy, white xy.
REC709_CHROMATICITIES = (0.64, 0.33, 0.30, 0.60, 0.15, 0.06, 0.3127, 0.3290)
_DTYPES = (np.float16, np.float32, np.uint32)
#: The channels of a full render frame besides Cryptomatte (DESIGN.md section 3).
# fmt: off
CHANNELS = ("R", "G", "B", "A", "depth.Z", "N.X", "N.Y", "N.Z",
            "motion.X", "motion.Y", "back.X", "back.Y", "occlusion.Y", "id")
# fmt: on


def write_exr(
    path: str | os.PathLike,
    layers: dict[str, np.ndarray],
    *,
    cryptomatte: tuple[np.ndarray, Sequence[str]]
    | tuple[np.ndarray, Sequence[str], int]
    | None = None,
    attributes: dict[str, object] | None = None,
    compression: str = "zip",
) -> Path:
    """Write one single-part scanline EXR through a temp file + rename.

    layers: channel name -> (h, w) array of float16, float32 or uint32. cryptomatte: (ids
    (h, w) uint32, names) where id ``i`` is ``names[i - 1]``; adds the CryptoObject layer and
    its manifest (a third item ``always``: see :func:`cryptomatte_channels`). attributes: extra
    header entries (strings, numbers). compression: a key of :data:`CODECS`.
    """
    import OpenEXR

    codec = getattr(OpenEXR, CODECS[compression], None)
    if codec is None:
        raise UserError(
            f"render.exr_compression = {compression!r} needs the openexr package 3.5 or newer "
            f"(this one is {OpenEXR.__version__}): pip install -U 'openexr>=3.5,<4', or choose zip"
        )

    from destruct.render import exr_zip
    from destruct.render.cryptomatte import cryptomatte_channels

    channels: dict[str, np.ndarray] = {}
    shape = None
    for name, arr in layers.items():
        a = np.ascontiguousarray(arr)
        if a.dtype.type not in _DTYPES:
            raise TypeError(
                f"EXR channel {name!r}: dtype {a.dtype} is not float16, float32 or uint32"
            )
        if a.ndim != 2 or (shape is not None and a.shape != shape):
            raise ValueError(f"EXR channel {name!r}: shape {a.shape}, expected 2-D {shape or ''}")
        shape = a.shape
        channels[name] = a
    extra: dict[str, object] = {}
    if cryptomatte is not None:
        ids, names, *always = cryptomatte
        cchan, chead = cryptomatte_channels(ids, names, always=always[0] if always else None)
        channels.update(cchan)
        extra.update(chead)
    extra.update(attributes or {})
    if compression in exr_zip.CODES:
        data = exr_zip.encode(
            channels,
            compression=compression,
            chromaticities=REC709_CHROMATICITIES,
            attributes=extra,
        )
    else:
        header = {
            "compression": codec,
            "type": OpenEXR.scanlineimage,
            "chromaticities": REC709_CHROMATICITIES,
            **extra,
        }
        buf = io.BytesIO()
        OpenEXR.File(header, channels).write(buf)
        data = buf.getvalue()
    return atomic_write_bytes(path, data)


def read_exr(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every channel of an EXR as (h, w) arrays (float16, float32 or uint32)."""
    return _open(path)[1]


def read_exr_header(path: str | os.PathLike) -> dict[str, object]:
    """The EXR header (chromaticities, Cryptomatte attributes, ...)."""
    return _open(path, header_only=True)[0]


def _open(path: str | os.PathLike, header_only: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    import OpenEXR

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing: run the render stage first")
    # the binding raises plain RuntimeError or ValueError on a damaged file, on opening or on
    # the first access to its parts
    try:
        f = OpenEXR.File(str(path), separate_channels=True, header_only=header_only)
        header = dict(f.header())
        channels = {} if header_only else {n: ch.pixels for n, ch in f.channels().items()}
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path} is not a readable EXR ({e}); re-run render with --force") from None
    return header, channels

"""Cryptomatte (Psyop, 2015 spec v1.2) for the id pass: MurmurHash3 ids, ranks and manifest.

Each object name hashes to a uint32 with MurmurHash3_32 (seed 0); its float id is that bit
pattern read as float32, with the exponent nudged away from 0 and 255 so it is never a
denormal, inf or NaN. A layer ``CryptoObject`` stores ranked (id, coverage) pairs in the
channels ``CryptoObject00.RGBA`` .. ``CryptoObject02.RGBA`` (six ranks). The id pass here is
exact (one sample per pixel, no blended edges), so rank 0 holds the pixel's object with
coverage 1 and the other ranks are empty. The header carries ``cryptomatte/<key>/name``,
``hash``, ``conversion`` and ``manifest`` (JSON ``{name: "%08x"}``), ``<key>`` being the first 7
hex digits of the layer name's own hash.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence

import mmh3
import numpy as np

LAYER = "CryptoObject"
LEVELS = 3  # CryptoObject00..02, two ranks each


def crypto_hash(name: str) -> int:
    """The uint32 Cryptomatte hash of ``name`` (exponent adjusted, spec section "hashing")."""
    h = mmh3.hash(name, 0, signed=False)
    exp = (h >> 23) & 0xFF
    if exp in (0, 255):
        h ^= 1 << 23
    return h


@functools.lru_cache(maxsize=4)
def _hash_table(names: tuple[str, ...]) -> np.ndarray:
    """(n + 1,) uint32, read-only: 0 (background), then the hash of each name. Cached, since
    every frame of a render hashes the same thousands of names."""
    table = np.zeros(len(names) + 1, dtype=np.uint32)
    table[1:] = [crypto_hash(n) for n in names]
    table.flags.writeable = False
    return table


def layer_key(layer: str = LAYER) -> str:
    """The 7-hex-digit key of a layer's header attributes."""
    return f"{mmh3.hash(layer, 0, signed=False):08x}"[:7]


def cryptomatte_channels(
    ids: np.ndarray, names: Sequence[str], layer: str = LAYER, *, always: int | None = None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Channels and header attributes for an exact id pass.

    ids: (h, w) uint32, 0 = background, ``i`` = ``names[i - 1]``. Returns float32 channels
    ``<layer>00.R`` .. ``<layer>02.A`` and the four ``cryptomatte/<key>/...`` attributes. The
    manifest lists the first ``always`` names (every piece, visible or not) plus the names of
    the other ids present in this frame (rubble); ``always=None`` lists every name.
    """
    table = _hash_table(tuple(names))
    hashes = table[1:]
    ids = np.asarray(ids)
    if ids.size and int(ids.max()) > len(names):
        raise ValueError(f"id {int(ids.max())} has no name (only {len(names)} names)")
    fid = table[ids].view(np.float32)
    cov = (ids > 0).astype(np.float32)
    zero = np.zeros(ids.shape, dtype=np.float32)
    channels: dict[str, np.ndarray] = {}
    for level in range(LEVELS):
        for c in "RGBA":
            channels[f"{layer}{level:02d}.{c}"] = zero
    channels[f"{layer}00.R"] = fid
    channels[f"{layer}00.G"] = cov
    key = layer_key(layer)
    listed = np.ones(len(names), dtype=bool)
    if always is not None:
        listed[always:] = False
        present = np.zeros(len(names) + 1, dtype=bool)  # a mask: 30x cheaper than np.unique
        present[ids.ravel()] = True
        present[: always + 1] = False
        listed |= present[1:]
    manifest = {names[i]: f"{int(hashes[i]):08x}" for i in np.flatnonzero(listed)}
    header = {
        f"cryptomatte/{key}/name": layer,
        f"cryptomatte/{key}/hash": "MurmurHash3_32",
        f"cryptomatte/{key}/conversion": "uint32_to_float32",
        f"cryptomatte/{key}/manifest": json.dumps(manifest, separators=(",", ":")),
    }
    return channels, header


def read_manifest(header: dict, layer: str = LAYER) -> dict[str, str]:
    """The ``{name: hex hash}`` manifest of ``layer`` from an EXR header."""
    return json.loads(header[f"cryptomatte/{layer_key(layer)}/manifest"])

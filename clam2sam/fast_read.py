"""Fast whole-array reads of the store's own arrays (one shard file -> one ``read()`` -> decode in place).

zarr 3.1's generic path reads a sharded array chunk by chunk through its async machinery, which costs
about 2x the decode time on small machines. The store writes every per-slide array as exactly one shard
(``clam2sam.store.write_slide_group``), so a whole-array read can be done with one file read, the shard
index at its end, and one Blosc decompression per inner chunk straight into the output buffer.

Only the layout this project writes is handled: a local directory store, ``regular`` chunk grid with a
single shard along axis 0 covering the array, ``sharding_indexed`` with inner codecs ``bytes`` (little
endian) [+ ``blosc``] and index codecs ``bytes`` + ``crc32c`` at the end. Anything else returns ``None`` and
the caller falls back to zarr. The shard index checksum is verified (CRC32C), so a corrupt shard raises
``ValueError`` just as zarr would.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

_EMPTY = np.uint64(2**64 - 1)


def _crc32c(data: bytes) -> int:
    from google_crc32c import value  # zarr's own dependency for the crc32c codec

    return value(data)


def _parse(meta: dict):
    """Return (shape, dtype, fill, shard_shape, inner_shape, blosc: bool) or None when not our layout."""
    if meta.get("node_type") != "array" or meta.get("zarr_format") != 3 or meta.get("storage_transformers"):
        return None
    codecs = meta.get("codecs") or []
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        return None
    cfg = codecs[0]["configuration"]
    if cfg.get("index_location", "end") != "end":
        return None
    idx_codecs = [c.get("name") for c in cfg.get("index_codecs", [])]
    if idx_codecs != ["bytes", "crc32c"]:
        return None
    inner = cfg.get("codecs", [])
    if not inner or inner[0].get("name") != "bytes" or inner[0].get("configuration", {}).get("endian",
                                                                                            "little") != "little":
        return None
    if len(inner) == 1:
        blosc = False
    elif len(inner) == 2 and inner[1].get("name") == "blosc":
        blosc = True
    else:
        return None
    grid = meta.get("chunk_grid", {})
    if grid.get("name") != "regular":
        return None
    enc = meta.get("chunk_key_encoding", {})
    if enc.get("name") != "default" or enc.get("configuration", {}).get("separator", "/") != "/":
        return None
    shape = tuple(meta["shape"])
    shard = tuple(grid["configuration"]["chunk_shape"])
    chunk = tuple(cfg["chunk_shape"])
    if not shape or shard[0] < shape[0] or shard[1:] != shape[1:] or chunk[1:] != shape[1:]:
        return None
    try:
        dtype = np.dtype(meta["data_type"]).newbyteorder("<")
    except TypeError:
        return None
    return shape, dtype, meta.get("fill_value", 0), shard, chunk, blosc


def read_whole_array(array_dir: str | os.PathLike) -> np.ndarray | None:
    """Read a whole single-shard array written by this project, or return None to let zarr do it.

    Raises:
        ValueError: the shard is truncated or its index checksum does not match.
    """
    array_dir = Path(array_dir)
    try:
        meta = json.loads((array_dir / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    parsed = _parse(meta)
    if parsed is None:
        return None
    shape, dtype, fill, shard, chunk, blosc = parsed
    rows = chunk[0]
    n_inner = shard[0] // rows
    if n_inner * rows != shard[0]:
        return None
    out = np.empty((shard[0],) + tuple(shape[1:]), dtype=dtype)   # (shard_rows, ...) then trimmed
    shard_file = array_dir.joinpath("c", *(["0"] * len(shape)))
    if shape[0] == 0:
        return out[:0].astype(dtype.newbyteorder("="), copy=False)
    try:
        with open(shard_file, "rb") as f:
            data = f.read()
    except FileNotFoundError:                                       # every chunk equal to the fill value
        out[...] = fill if fill is not None else 0
        return out[: shape[0]]
    idx_bytes = 16 * n_inner
    if len(data) < idx_bytes + 4:
        raise ValueError(f"shard {shard_file} is truncated ({len(data)} bytes)")
    index_raw = data[-(idx_bytes + 4):-4]
    crc = int.from_bytes(data[-4:], "little")
    if _crc32c(index_raw) != crc:
        raise ValueError(f"shard {shard_file}: index checksum mismatch (corrupt or truncated file)")
    index = np.frombuffer(index_raw, dtype="<u8").reshape(n_inner, 2)  # (offset, nbytes) per inner chunk
    view = memoryview(data)
    chunk_bytes = rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    flat = out.reshape(n_inner, -1).view(np.uint8).reshape(n_inner, -1)  # (n_inner, chunk_bytes)
    if blosc:
        from numcodecs import blosc as _blosc
    for k in range(n_inner):
        off, nb = index[k]
        if off == _EMPTY and nb == _EMPTY:
            out[k * rows:(k + 1) * rows] = fill if fill is not None else 0
            continue
        off, nb = int(off), int(nb)
        if off + nb > len(data) - idx_bytes - 4:
            raise ValueError(f"shard {shard_file}: chunk {k} lies outside the file (truncated)")
        src = view[off:off + nb]
        if blosc:
            _blosc.decompress(src, flat[k])
        else:
            if nb != chunk_bytes:
                raise ValueError(f"shard {shard_file}: chunk {k} has {nb} bytes, expected {chunk_bytes}")
            flat[k] = np.frombuffer(src, dtype=np.uint8)
    res = out[: shape[0]]
    return res if dtype.isnative else res.astype(dtype.newbyteorder("="))

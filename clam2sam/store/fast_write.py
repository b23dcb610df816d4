"""Write the store's per-slide arrays as Zarr v3 single-shard arrays, directly (the mirror of fast_read).

zarr 3.1's generic write path assembles a whole shard in memory through its async machinery (several
copies of the array and ~60% of a conversion's time in profiles). The store's layout is fixed and simple
(``clam2sam.store.writer.write_slide_group``): every per-slide array is ONE shard along axis 0, inner chunks of
``rows`` rows, inner codecs ``bytes`` (little endian) [+ ``blosc``] + ``crc32c``, index ``bytes`` + ``crc32c``
at the end. So a shard can be streamed: inner chunks are compressed by a small thread pool (Blosc releases the
GIL), each gets its CRC32C appended (Zarr v3's ``crc32c`` codec: 4 bytes, little endian, of the encoded chunk),
they are written in order as they finish, then the index and its CRC32C are appended. Memory stays at a few
chunks whatever the slide size. Every reader (zarr, :mod:`clam2sam.store.fast_read`) verifies each chunk's CRC32C,
so a flipped bit anywhere in a shard is an error, never a silently changed value.

The metadata written is exactly what ``zarr.create_array`` writes for the same parameters (a test compares
the two), so zarr, and any other Zarr v3 reader, reads these arrays unchanged.
"""
from __future__ import annotations

import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from clam2sam._testhooks import maybe_die
from clam2sam.threads import ProcessPool, env_threads, usable_cpus

_EMPTY = 2**64 - 1
_POOL = ProcessPool("clam2sam-encode")
SMALL_BYTES = 256 << 10   # arrays below this are encoded inline (a thread hop costs more than it saves)


def encode_threads() -> int:
    """Threads that compress inner chunks: ``CLAM2SAM_THREADS`` or the usable CPUs (``--workers`` divides it)."""
    env = env_threads()
    return usable_cpus() if env is None else env


def _pool() -> ThreadPoolExecutor:
    """The process's encode pool (re-created after a fork: a forked worker cannot use its parent's threads)."""
    return _POOL.get(encode_threads())


def _fill_value(dtype: np.dtype):
    return 0.0 if dtype.kind == "f" else 0


def array_metadata(shape: tuple, dtype, rows: int, shard_rows: int, codec: str, clevel: int, *,
                   checksum: bool = True) -> dict:
    """The ``zarr.json`` of one single-shard array (as ``zarr.create_array`` writes it).

    ``checksum``: end the inner codecs with ``crc32c`` (per-chunk checksum; False: the layout of stores
    written before per-chunk checksums, kept for tests of reading such stores).
    """
    dtype = np.dtype(dtype)
    inner = [{"name": "bytes", "configuration": {"endian": "little"}}]
    if codec != "none":
        inner.append({"name": "blosc", "configuration": {"typesize": dtype.itemsize, "cname": codec,
                                                         "clevel": clevel, "shuffle": "shuffle",
                                                         "blocksize": 0}})
    if checksum:
        inner.append({"name": "crc32c"})
    rest = [int(v) for v in shape[1:]]
    return {
        "shape": [int(v) for v in shape],
        "data_type": dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [int(shard_rows)] + rest}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": _fill_value(dtype),
        "codecs": [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": [int(rows)] + rest,
            "codecs": inner,
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
            "index_location": "end"}}],
        "attributes": {},
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def _encoder(codec: str, clevel: int, itemsize: int):
    if codec == "none":
        return lambda block: block.tobytes()
    from numcodecs import blosc

    cname = codec.encode()
    # pool threads use Blosc's context API (one internal thread each, GIL released); typesize = itemsize so
    # that byte-shuffle groups the bytes of each value, as zarr's BloscCodec does
    return lambda block: blosc.compress(block, cname, clevel, 1, 0, itemsize)


def _create(path: Path):
    """Open a store file for writing (the one place every file of a slide is created: tests inject errors here)."""
    return open(path, "wb")


def write_json(path: Path, obj: dict, *, atomic: bool = True) -> None:
    """Write a JSON document; atomically (temp file + rename) by default: a reader sees the old or the new one."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}") if atomic else path
    with _create(tmp) as f:
        f.write(json.dumps(obj, indent=2, allow_nan=False).encode())
    maybe_die("json")                                    # test hook: written, not yet renamed into place
    if atomic:
        os.replace(tmp, path)


def write_array(array_dir: str | os.PathLike, data: np.ndarray, *, rows: int, shard_rows: int,
                codec: str, clevel: int, checksum: bool = True) -> None:
    """Write ``data`` as a single-shard Zarr v3 array under ``array_dir`` (streamed, bounded memory).

    Args:
        data: ``(n, ...)`` array (any byte order; stored little endian).
        rows: inner chunk rows; ``shard_rows``: the shard's rows (a multiple of ``rows`` covering ``n``).
        codec: ``"zstd"``, ``"lz4"`` (Blosc, byte shuffle) or ``"none"``.
        checksum: append each encoded chunk's CRC32C (the ``crc32c`` codec; the store always does).
    """
    from google_crc32c import value as crc32c

    array_dir = Path(array_dir)
    array_dir.mkdir(parents=True, exist_ok=True)
    n = int(data.shape[0])
    le = data.dtype.newbyteorder("<")
    meta = array_metadata(data.shape, data.dtype, rows, shard_rows, codec, clevel, checksum=checksum)
    write_json(array_dir / "zarr.json", meta, atomic=False)
    if n == 0:
        return
    n_inner = shard_rows // rows
    encode = _encoder(codec, clevel, data.dtype.itemsize)
    if checksum:
        compress = encode

        def encode(block):                               # bytes -> compressor -> crc32c (zarr's codec order)
            enc = compress(block)                        # (pieces written back to back: no concatenation copy)
            return enc, int(crc32c(enc)).to_bytes(4, "little")

    def block(k: int) -> np.ndarray:                     # (rows, ...) little endian, zero-padded at the end
        b = data[k * rows:(k + 1) * rows]
        if b.shape[0] < rows:
            pad = np.zeros((rows,) + data.shape[1:], le)
            pad[: b.shape[0]] = b
            return pad
        return np.ascontiguousarray(b, dtype=le)

    shard = array_dir.joinpath("c", *(["0"] * data.ndim))
    shard.parent.mkdir(parents=True, exist_ok=True)
    index = np.empty((n_inner, 2), "<u8")                # (offset, nbytes) per inner chunk
    offset = 0
    with _create(shard) as f:
        def put(k: int, enc) -> None:                    # enc: bytes, or (bytes, crc32c bytes)
            nonlocal offset
            parts = enc if isinstance(enc, tuple) else (enc,)
            size = 0
            for part in parts:
                f.write(part)
                size += len(part)
            index[k] = (offset, size)
            offset += size
            maybe_die("chunk")                           # test hook: a shard without its index yet

        if n_inner == 1 or data.nbytes < SMALL_BYTES or encode_threads() == 1:
            for k in range(n_inner):
                put(k, encode(block(k)))
        else:
            pool, window = _pool(), encode_threads() + 1   # chunks in flight: bounded memory
            pending: deque = deque()
            for k in range(n_inner):
                pending.append((k, pool.submit(lambda kk: encode(block(kk)), k)))
                if len(pending) >= window:
                    kk, fut = pending.popleft()
                    put(kk, fut.result())
            while pending:
                kk, fut = pending.popleft()
                put(kk, fut.result())
        raw = index.tobytes()
        f.write(raw)
        f.write(int(crc32c(raw)).to_bytes(4, "little"))

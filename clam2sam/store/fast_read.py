"""Fast whole-array reads of the store's own arrays (one shard file, read straight into the output).

zarr 3.1's generic path reads a sharded array chunk by chunk through its async machinery, which costs
about 2x the decode time on small machines. The store writes every per-slide array as exactly one shard
(``clam2sam.store.writer.write_slide_group`` / ``clam2sam.store.fast_write``), so a whole-array read needs only the shard
index at the end of the file and then, per inner chunk, one ``pread`` and (with Blosc) one decompression
straight into the output buffer:

* codec ``none``: the chunk bytes *are* the output bytes. When the chunks lie back to back in order (what
  both writers produce) the whole data region is read with ``preadv`` directly into the output array (split
  over the read threads for large arrays); otherwise chunk by chunk, still into the output.
* ``blosc``: inner chunks are read and decompressed in parallel by a small per-process thread pool (Blosc's
  context API, used off the main thread, releases the GIL), each thread reading into its own reused
  scratch buffer and decompressing into its slice of the output.

Threads: ``CLAM2SAM_THREADS`` if set, else :func:`set_read_threads`, else the usable CPUs. The pool is
created lazily and re-created after a fork (a forked DataLoader worker cannot use its parent's threads).

Only the layout this project writes is handled: a local directory store, ``regular`` chunk grid with a
single shard along axis 0 covering the array, ``sharding_indexed`` with inner codecs ``bytes`` (little
endian) [+ ``blosc``] [+ ``crc32c``] and index codecs ``bytes`` + ``crc32c`` at the end. Anything else returns
``None`` and the caller falls back to zarr. The shard index checksum is verified (CRC32C), every chunk's
extent and Blosc header are checked against the file, and, when the inner codecs end with ``crc32c`` (every
store written since per-chunk checksums), every chunk's own CRC32C is verified before it is decoded, so a
corrupt or truncated shard -- one flipped bit included -- raises ``ValueError`` (zarr would raise too) instead
of returning garbage. Stores written before per-chunk checksums (no ``crc32c`` in the inner codecs) still read;
there only the index and the Blosc headers are checked.

With per-chunk checksums a chunk is read in cache-sized pieces and each piece is checksummed right after it
is read (one pass over memory); with codec ``none`` the pieces go straight into the output, so no copy is
added.
"""
from __future__ import annotations

import json
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from clam2sam.threads import ProcessPool, env_threads, usable_cpus

_EMPTY = 2**64 - 1
_BLOSC_HEADER = struct.Struct("<4B3I")   # version, versionlz, flags, typesize, nbytes, blocksize, cbytes
SMALL_BYTES = 1 << 20                    # arrays (stored bytes) below this are read inline, no thread hop
_SPLIT_ALIGN = 1 << 16                   # codec none: per-thread pieces of a contiguous read, aligned
_CRC_PIECE = 256 << 10                   # one read thread: chunks read and checksummed in cache-sized pieces

_POOL = ProcessPool("clam2sam-read")
_THREADS_SET: int | None = None
_TLS = threading.local()


# ------------------------------------------------------------------------------------------ threads

def read_threads() -> int:
    """Threads per whole-array read: ``CLAM2SAM_THREADS``, else :func:`set_read_threads`, else CPUs."""
    env = env_threads()
    if env is not None:
        return env
    return _THREADS_SET if _THREADS_SET is not None else usable_cpus()


def set_read_threads(n: int | None) -> None:
    """Set this process's read threads (``None``: back to the CPU count); ``CLAM2SAM_THREADS`` still wins.

    Meant for DataLoader workers: with W workers on C CPUs each should use about C // W threads.
    """
    global _THREADS_SET
    _THREADS_SET = None if n is None else max(1, int(n))


def _pool(n: int) -> ThreadPoolExecutor:
    """The process's read pool with ``n`` threads (new after a fork or when ``n`` changed)."""
    return _POOL.get(n)


def _scratch(n: int) -> np.ndarray:
    """A reused per-thread byte buffer of at least ``n`` bytes (already paged in after first use)."""
    buf = getattr(_TLS, "buf", None)
    if buf is None or buf.nbytes < n:
        buf = _TLS.buf = np.empty(max(n, 1 << 16), dtype=np.uint8)
    return buf[:n]


def _scratch2(n: int) -> np.ndarray:
    """A second per-thread buffer (decoded partial last chunk)."""
    buf = getattr(_TLS, "buf2", None)
    if buf is None or buf.nbytes < n:
        buf = _TLS.buf2 = np.empty(max(n, 1 << 16), dtype=np.uint8)
    return buf[:n]


# ------------------------------------------------------------------------------------------ helpers

def _crc32c(data) -> int:
    """CRC32C of a bytes-like object or a contiguous uint8 numpy array (no copy for arrays)."""
    from google_crc32c import value  # zarr's own dependency for the crc32c codec

    return value(data if isinstance(data, (bytes, np.ndarray)) else bytes(data))


def _pread_crc(fd: int, dest: np.ndarray, offset: int, what: str, crc: int = 0, piece: int = _CRC_PIECE) -> int:
    """Fill ``dest`` (uint8, contiguous) from ``fd`` at ``offset`` and return the CRC32C of the bytes read
    (continuing ``crc``), ``piece`` bytes at a time. One read thread: cache-sized pieces, each checksummed
    right after it is read while it is still in the CPU cache. Several read threads: whole chunks, since each
    read / checksum call is a GIL hand-off between the threads, and small pieces cost more in hand-offs than
    they save in memory traffic (``bench/bench_checksum.py``)."""
    from google_crc32c import extend

    for a in range(0, dest.nbytes, piece):
        part = dest[a:a + piece]
        _pread_into(fd, part, offset + a, what)
        crc = extend(crc, part)
    return crc


def _stored_crc(fd: int, offset: int, what: str) -> int:
    tail = bytearray(4)
    _pread_into(fd, tail, offset, what)
    return int.from_bytes(tail, "little")


def _verify_chunk(data: np.ndarray, stored: int, name: str, k: int, got: int | None = None) -> None:
    """Raise ValueError when the chunk bytes ``data`` (uint8, contiguous; or their CRC32C ``got``) do not
    have the CRC32C ``stored``."""
    got = _crc32c(data) if got is None else got
    if got != stored:
        raise ValueError(f"shard {name}: chunk {k} checksum mismatch (stored crc32c {stored:08x}, computed "
                         f"{got:08x}): the chunk is corrupt (bit flip on disk or in transfer)")


def _pread_into(fd: int, dest, offset: int, what: str) -> None:
    """Fill the writable buffer ``dest`` from ``fd`` at ``offset`` (loops over short reads)."""
    mv = memoryview(dest).cast("B")
    got, n = 0, mv.nbytes
    while got < n:
        r = os.preadv(fd, [mv[got:]], offset + got)
        if r <= 0:
            raise ValueError(f"{what}: unexpected end of file (truncated)")
        got += r


def _parse(meta: dict):
    """Return (shape, dtype, fill, shard_shape, inner_shape, blosc: bool, crc: bool) or None when not our
    layout (``crc``: every inner chunk ends with its CRC32C)."""
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
    crc = inner[-1].get("name") == "crc32c" and len(inner) > 1
    if crc:
        inner = inner[:-1]
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
    if not shape or len(shard) != len(shape) or len(chunk) != len(shape):
        return None
    if shard[0] < shape[0] or shard[1:] != shape[1:] or chunk[1:] != shape[1:] or chunk[0] <= 0:
        return None
    try:
        dtype = np.dtype(meta["data_type"]).newbyteorder("<")
    except TypeError:
        return None
    if dtype.hasobject or dtype.itemsize == 0:
        return None
    return shape, dtype, meta.get("fill_value", 0), shard, chunk, blosc, crc


def _wait_all(futs) -> None:
    """Wait for every task (the file must stay open until all are done), then raise the first error."""
    err = None
    for f in futs:
        try:
            f.result()
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the others finished
            err = err or e
    if err is not None:
        raise err


_META: dict[str, tuple[tuple, object]] = {}    # zarr.json path -> (stat key, parsed layout or None)
_META_MAX = 65536


def _metadata(path: str):
    """``_parse`` of an array's ``zarr.json``, cached per path while the file's stat is unchanged."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    hit = _META.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]
    try:
        with open(path, "rb") as f:
            parsed = _parse(json.loads(f.read()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if len(_META) >= _META_MAX:
        _META.clear()
    _META[path] = (key, parsed)
    return parsed


def _fill(out: np.ndarray, r0: int, r1: int, fill) -> None:
    out[r0:r1] = fill if fill is not None else 0


# ------------------------------------------------------------------------------------------ read

def read_whole_array(array_dir: str | os.PathLike, *, threads: int | None = None,
                     missing_shard: str = "fill") -> np.ndarray | None:
    """Read a whole single-shard array written by this project, or return None to let zarr do it.

    ``threads``: read/decode threads (default :func:`read_threads`); 1 reads serially in the caller.
    ``missing_shard``: what an absent shard file of a non-empty array means: ``"fill"`` (Zarr's rule: every
    chunk equals the fill value; what zarr itself writes for such arrays) or ``"error"`` (the store's own
    writer always writes the shard, so for its arrays a missing shard is damage). ``"error"`` applies to arrays
    with per-chunk checksums only: stores written before them may come from zarr's own writer, which leaves
    out the shard of an all-fill array (e.g. all-zero SAM areas), so there the fill rule stays.

    Raises:
        ValueError: the shard is truncated, its index or a chunk's checksum does not match, a chunk is
            malformed, or (``missing_shard="error"``) the shard file is missing.
    """
    array_dir = os.fspath(array_dir)
    parsed = _metadata(os.path.join(array_dir, "zarr.json"))
    if parsed is None:
        return None
    shape, dtype, fill, shard, chunk, blosc, crc = parsed
    rows = chunk[0]
    n_inner = shard[0] // rows
    if n_inner * rows != shard[0]:
        return None
    out = np.empty(shape, dtype=dtype)
    if out.nbytes == 0:
        return out.astype(dtype.newbyteorder("="), copy=False)
    shard_file = os.path.join(array_dir, "c", *(["0"] * len(shape)))
    try:
        fd = os.open(shard_file, os.O_RDONLY)
    except FileNotFoundError:                                       # every chunk equal to the fill value
        if missing_shard == "error" and crc:
            raise ValueError(f"shard file {shard_file} is missing (the array has {shape[0]} rows: deleted or "
                             "lost file)") from None
        _fill(out, 0, shape[0], fill)
        return out.astype(dtype.newbyteorder("="), copy=False)
    try:
        _read_shard(fd, shard_file, out, rows, n_inner, fill, blosc, crc,
                    read_threads() if threads is None else max(1, int(threads)))
    finally:
        os.close(fd)
    return out if dtype.isnative else out.astype(dtype.newbyteorder("="))


def _read_shard(fd: int, name: str, out: np.ndarray, rows: int, n_inner: int, fill, blosc: bool, crc: bool,
                threads: int) -> None:
    size = os.fstat(fd).st_size
    idx_bytes = 16 * n_inner
    data_end = size - idx_bytes - 4                                # chunks must end before the index
    if data_end < 0:
        raise ValueError(f"shard {name} is truncated ({size} bytes)")
    tail = bytearray(idx_bytes + 4)
    _pread_into(fd, tail, data_end, f"shard {name}")
    idx_crc = int.from_bytes(tail[-4:], "little")
    if _crc32c(memoryview(tail)[:idx_bytes]) != idx_crc:
        raise ValueError(f"shard {name}: index checksum mismatch (corrupt or truncated file)")
    index = np.frombuffer(bytes(tail[:idx_bytes]), dtype="<u8").reshape(n_inner, 2)   # (offset, nbytes)

    n_rows = out.shape[0]
    row_bytes = out.nbytes // n_rows
    chunk_bytes = rows * row_bytes
    tail_bytes = 4 if crc else 0                                   # per-chunk CRC32C after the encoded bytes
    total = out.nbytes
    n_used = -(-n_rows // rows)                                    # chunks past the array are never read
    flat = out.reshape(-1).view(np.uint8)
    offs = [int(v) for v in index[:n_used, 0]]
    nbs = [int(v) for v in index[:n_used, 1]]
    stored = 0
    for k in range(n_used):
        if offs[k] == _EMPTY and nbs[k] == _EMPTY:
            continue
        if offs[k] + nbs[k] > data_end:
            raise ValueError(f"shard {name}: chunk {k} lies outside the file (truncated)")
        if not blosc and nbs[k] != chunk_bytes + tail_bytes:
            raise ValueError(f"shard {name}: chunk {k} has {nbs[k]} bytes, expected {chunk_bytes + tail_bytes}")
        if nbs[k] < tail_bytes:
            raise ValueError(f"shard {name}: chunk {k} is too short for its checksum")
        stored += nbs[k]
    use_pool = threads > 1 and n_used > 1 and stored >= SMALL_BYTES

    if not blosc and not crc:
        contiguous = all(offs[k] == offs[0] + k * chunk_bytes for k in range(n_used))
        if contiguous:                                             # one read of the data region into out
            if not use_pool:
                _pread_into(fd, flat, offs[0], f"shard {name}")
                return
            step = -(-total // threads)
            step = -(-step // _SPLIT_ALIGN) * _SPLIT_ALIGN
            pieces = [(a, min(a + step, total)) for a in range(0, total, step)]
            pool = _pool(threads)
            _wait_all([pool.submit(_pread_into, fd, flat[a:b], offs[0] + a, f"shard {name}") for a, b in pieces])
            return

    piece = max(chunk_bytes, 1) if use_pool else _CRC_PIECE          # see _pread_crc

    def one(k: int) -> None:
        a = k * chunk_bytes
        b = min(a + chunk_bytes, total)
        if offs[k] == _EMPTY and nbs[k] == _EMPTY:
            _fill(out, k * rows, min((k + 1) * rows, n_rows), fill)
            return
        if not blosc and not crc:                                  # a raw chunk: its prefix is the rows we keep
            _pread_into(fd, flat[a:b], offs[k], f"shard {name}")
            return
        if crc:                                                    # verified before it is used or decoded
            enc = nbs[k] - 4
            if not blosc:                                          # raw: straight into the output
                stored_crc = _stored_crc(fd, offs[k] + enc, f"shard {name}")
                got = _pread_crc(fd, flat[a:b], offs[k], f"shard {name}", piece=piece)
                if b - a < chunk_bytes:                            # partial last chunk: its padding aside
                    got = _pread_crc(fd, _scratch(chunk_bytes - (b - a)), offs[k] + b - a, f"shard {name}", got)
                _verify_chunk(None, stored_crc, name, k, got)
                return
            if use_pool:                                           # encoded bytes + their CRC32C: one read
                buf = _scratch(nbs[k])
                _pread_into(fd, buf, offs[k], f"shard {name}")
                src = buf[:enc]
                _verify_chunk(src, int.from_bytes(buf[enc:].tobytes(), "little"), name, k)
            else:
                src = _scratch(enc)
                stored_crc = _stored_crc(fd, offs[k] + enc, f"shard {name}")
                _verify_chunk(None, stored_crc, name, k, _pread_crc(fd, src, offs[k], f"shard {name}"))
        else:
            src = _scratch(nbs[k])
            _pread_into(fd, src, offs[k], f"shard {name}")
        if src.nbytes < _BLOSC_HEADER.size:
            raise ValueError(f"shard {name}: chunk {k} is too short for a Blosc header")
        _v, _vl, _flags, _ts, nbytes, _bs, cbytes = _BLOSC_HEADER.unpack_from(src)
        if nbytes != chunk_bytes or cbytes > src.nbytes:
            raise ValueError(f"shard {name}: chunk {k} has a bad Blosc header "
                             f"(nbytes {nbytes}, cbytes {cbytes}; expected {chunk_bytes} from {src.nbytes} bytes)")
        from numcodecs import blosc as _blosc

        if b - a == chunk_bytes:
            _blosc.decompress(src, flat[a:b])
        else:                                                      # partial last chunk: decode aside, copy rows
            dst = _scratch2(chunk_bytes)
            _blosc.decompress(src, dst)
            flat[a:b] = dst[: b - a]

    if use_pool:
        pool = _pool(threads)
        _wait_all([pool.submit(one, k) for k in range(n_used)])
    else:
        for k in range(n_used):
            one(k)

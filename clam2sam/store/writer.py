"""The Zarr v3 store: write a slide (complete-last), read a slide, resume, lock.

Public API::

    w = StoreWriter("cohort.zarr", feature_dim=1024, feature_dtype="float32")
    w.write_slide(SlideArrays.from_partition("s1", features, coords, segment_ids, segment_areas=...))
    w.finalize(); w.close()

    r = open_store("cohort.zarr")
    for sid in r.slide_ids(): bag = r.read_slide(sid)

Each slide is its own group with one shard per array (a handful of files), so one writer per slide
never collides with another (zarr rewrites whole shards). The slide attr ``complete`` is written last:
an interrupted slide is visibly incomplete and is rewritten on the next run.
"""
from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np

from clam2sam.store import schema
from clam2sam._testhooks import maybe_die
from clam2sam.store.consolidate import consolidate, deferred_sigint
from clam2sam.errors import StoreError, UsageError
from clam2sam.store.fast_write import write_array, write_json
from clam2sam.ids import slide_key
from clam2sam.jsonable import jsonable  # noqa: F401 - also re-exported (stats, trainer)
from clam2sam.store.slide_arrays import SlideArrays
from clam2sam.store.lock import LOCK_NAME, StoreLock, acquire_lock, lock_is_stale, read_lock
from clam2sam.store.overwrite import (ASIDE_NAME, KEEP_ON_OVERWRITE, check_output, discard_aside, recover,
                                      restore_aside, set_aside)
from clam2sam.store.root import JsonGroup

__all__ = ["SlideArrays", "StoreWriter", "StoreReader", "open_store", "write_slide_group", "list_slide_keys",
           "acquire_lock", "read_lock", "lock_is_stale", "LOCK_NAME", "slide_is_complete", "CODECS",
           "DEFAULT_CODEC", "DEFAULT_CLEVEL", "resolve_clevel", "zarr_compressors"]

CHUNK_BYTES = 4 << 20  # ~4 MiB uncompressed per chunk
# Kept by --overwrite (KEEP_ON_OVERWRITE): the SAM pass cache (entries are keyed by model, checkpoint,
# parameters and geometry, so a kept entry is only ever reused for an identical SAM run; see clam2sam.sam.cache).


CODECS = ("lz4", "zstd", "none")
# Blosc-LZ4 by default: on 2 cores, training reads of a Blosc-zstd store decode at 0.7-0.8x the speed of
# torch.load of CLAM .pt files, Blosc-LZ4 at 1.2-1.7x, for a ~3 % larger store at clevel 9 (bench/RESULTS.md).
DEFAULT_CODEC = "lz4"
DEFAULT_CLEVEL = {"lz4": 9, "zstd": 3, "none": 0}   # per codec, used when no clevel is given


def resolve_clevel(codec: str, clevel: int | None) -> int:
    """The compression level to use: ``clevel`` when given, else the codec's default."""
    if codec not in CODECS:
        raise UsageError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    return DEFAULT_CLEVEL[codec] if clevel is None else int(clevel)


def zarr_compressors(codec: str = DEFAULT_CODEC, clevel: int | None = None, *, checksum: bool = True) -> tuple:
    """zarr's ``compressors=`` for the store's codec settings (``()`` = uncompressed): what
    :mod:`clam2sam.store.fast_write` writes, expressed for ``zarr.create_array`` (tests build reference arrays):
    Blosc (none for ``"none"``), then the per-chunk ``crc32c`` checksum (``checksum=False``: without it, the
    layout of stores written before per-chunk checksums)."""
    from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec   # zarr on demand: `inspect` does without

    clevel = resolve_clevel(codec, clevel)
    crc = (Crc32cCodec(),) if checksum else ()
    if codec == "none":
        return crc
    return (BloscCodec(cname=codec, clevel=clevel, shuffle=BloscShuffle.shuffle),) + crc


def chunk_rows(row_bytes: int) -> int:
    """Rows per chunk so that a chunk holds about CHUNK_BYTES (power of two, 64..65536)."""
    rows = max(64, min(65536, CHUNK_BYTES // max(row_bytes, 1)))
    return 1 << (rows.bit_length() - 1)


# ---------------------------------------------------------------------------------------------- writer

class StoreWriter:
    """Create or resume a store and write slides into it.

    Args:
        path: store directory (``*.zarr``).
        feature_dim, feature_dtype: fixed on first use; every slide must match.
        encoder: encoder name if known.
        membership: rule name recorded at the root.
        overwrite: replace an existing clam2sam store: it is set aside until the first slide is written or
            :meth:`finalize` is called, and put back by :meth:`close` otherwise (see :mod:`clam2sam.store.overwrite`).
            A file or a folder that is not a clam2sam store is never deleted.
        lock: take the store's write lock (workers writing single slides for a client pass False).
        break_stale_lock: take over a lock that cannot be verified (see :mod:`clam2sam.store.lock`).
        codec: Blosc inner codec: "lz4" (default: fast to write and to read), "zstd" (a few % smaller, slower)
            or "none".
        clevel: compression level (None: the codec's default, DEFAULT_CLEVEL).
    """

    def __init__(self, path: str | os.PathLike, *, feature_dim: int | None = None,
                 feature_dtype: str | None = None, encoder: str | None = None,
                 membership: str = schema.MEMBERSHIP_PARTITION, overwrite: bool = False, lock: bool = True,
                 break_stale_lock: bool = False, clevel: int | None = None, codec: str = DEFAULT_CODEC):
        from clam2sam import __version__

        self.path = Path(path)
        self.clevel = clevel = resolve_clevel(codec, clevel)  # validates the codec early
        self.codec = codec
        self._lock: StoreLock | None = None
        self._aside = False           # an --overwrite's old store waits in ASIDE_NAME until the first slide
        self.notes: list[str] = []    # what opening the store did (repairs), for the run's report
        check_output(self.path, overwrite=overwrite)   # a file / foreign folder is never written into or deleted
        if lock:
            try:
                self._lock = acquire_lock(self.path, break_stale=break_stale_lock)
            except OSError as e:
                raise write_error(e, path=self.path, what="cannot take the store's write lock") from e
        try:
            note = recover(self.path) if lock else None   # an --overwrite interrupted by a crash
            if note:
                self.notes.append(note)
            if overwrite:
                self._aside = set_aside(self.path)
        except OSError as e:
            self.close()
            raise write_error(e, path=self.path, what="cannot set the old store aside for --overwrite") from e
        try:
            if (self.path / "zarr.json").exists():
                try:
                    self.root = JsonGroup.open(self.path)   # zarr only for unusual / damaged metadata
                    a = dict(self.root.attrs)
                    self.root.require_group(schema.SLIDES_GROUP)  # also after a crash right after creation
                except Exception as e:  # noqa: BLE001 - damaged root metadata (zarr raises many types)
                    raise StoreError(f"corrupt store metadata ({type(e).__name__}: {str(e)[:120]})",
                                     path=self.path / "zarr.json",
                                     fix="convert into a new store, or pass --overwrite to start again") from e
                if a.get("schema_version") != schema.SCHEMA_VERSION:
                    raise StoreError(f"store has schema_version {a.get('schema_version')}, this tool writes "
                                     f"{schema.SCHEMA_VERSION}", path=self.path,
                                     fix="convert into a new store or pass --overwrite")
                if a.get("membership") and membership and a["membership"] != membership:
                    raise UsageError(f"store was converted with membership {a['membership']!r}, not "
                                     f"{membership!r}", path=self.path, fix="use --overwrite or another --out")
            else:
                # root + its attrs in one (atomic) write: a crash here leaves no attr-less root behind
                self.root = JsonGroup.create(self.path, {
                    "schema_version": schema.SCHEMA_VERSION, "tool": "clam2sam", "tool_version": __version__,
                    "feature_dim": None, "feature_dtype": None, "encoder": encoder, "membership": membership,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(), "n_slides": 0,
                    "codec": codec, "clevel": clevel})
                maybe_die("init")  # test hook (no-op unless CLAM2SAM_TEST_KILL_AT is set)
                self.root.require_group(schema.SLIDES_GROUP)
            if feature_dim is not None or feature_dtype is not None:
                self._set_features(feature_dim, feature_dtype)
            if encoder and not self.root.attrs.get("encoder"):
                self.root.attrs["encoder"] = encoder
        except OSError as e:
            self.close()
            raise write_error(e, path=self.path, what="cannot create or open the store") from e
        except BaseException:
            self.close()
            raise

    # -- state
    def record_features(self, dim: int, dtype) -> None:
        """Fix the store's feature dim/dtype (first call wins; used when workers write slides)."""
        try:
            self._set_features(dim, dtype)
        except OSError as e:
            raise write_error(e, path=self.path, what="cannot update the store's metadata") from e

    def _set_features(self, dim, dtype) -> None:
        a = self.root.attrs
        cur_dim, cur_dtype = a.get("feature_dim"), a.get("feature_dtype")
        if cur_dim is None and dim is not None:
            a["feature_dim"] = int(dim)
        if cur_dtype is None and dtype is not None:
            a["feature_dtype"] = str(np.dtype(dtype))

    def set_encoder(self, encoder: str | None) -> None:
        """Record the encoder name at the root when none is recorded yet."""
        if encoder and not self.root.attrs.get("encoder"):
            try:
                self.root.attrs["encoder"] = encoder
            except OSError as e:
                raise write_error(e, path=self.path, what="cannot update the store's metadata") from e

    def slides_group(self):
        return self.root[schema.SLIDES_GROUP]

    def is_complete(self, slide_id: str) -> bool:
        return slide_is_complete(self.path, slide_id)

    def check_compatible(self, slide_id: str, dim: int, dtype) -> None:
        """Raise StoreError when a slide's feature dim/dtype differs from the store's."""
        a = self.root.attrs
        if a.get("feature_dim") is not None and int(a["feature_dim"]) != int(dim):
            raise StoreError(f"feature dim {dim} differs from the store's {a['feature_dim']}", slide=slide_id,
                             fix="features from different encoders go into different stores")
        if a.get("feature_dtype") is not None and str(np.dtype(dtype)) != a["feature_dtype"]:
            raise StoreError(f"feature dtype {np.dtype(dtype)} differs from the store's {a['feature_dtype']}",
                             slide=slide_id, fix="convert slides of one dtype per store (no silent casting)")

    # -- writing
    def write_slide(self, s: SlideArrays) -> None:
        """Write one slide group; ``complete`` is set only after every array is on disk."""
        s.validate()
        D = s.features.shape[1]
        if str(s.features.dtype) not in schema.FEATURE_DTYPES:
            raise StoreError(f"features dtype {s.features.dtype} is not a float type", slide=s.slide_id)
        self.check_compatible(s.slide_id, D, s.features.dtype)
        self._set_features(D, s.features.dtype)
        write_slide_group(self.path, s, clevel=self.clevel, codec=self.codec)
        self.commit_overwrite()

    def finalize(self) -> None:
        """Record the number of complete slides and consolidate their metadata (re-run after later writes).

        Only complete slides are consolidated (:mod:`clam2sam.store.consolidate`), so the half-written metadata of an
        interrupted slide cannot break it; Ctrl-C while the metadata is rewritten is held back until it is
        written, then raised (KeyboardInterrupt).

        Raises:
            StoreError: the metadata cannot be written (disk full, ...) or the root metadata is damaged; the
                store stays readable.
        """
        self.commit_overwrite()  # the caller finishes the new store (even empty): the one set aside goes
        try:
            with deferred_sigint():
                keys = list_slide_keys(self.path, complete_only=True)
                if keys and self.root.attrs.get("feature_dim") is None:
                    self._recover_features(keys[0])
                self.root.attrs["n_slides"] = len(keys)
                maybe_die("consolidate")
                consolidate(self.path, keys)
        except OSError as e:
            raise write_error(e, path=self.path, what="cannot update the store's metadata") from e
        except ValueError as e:          # JSONDecodeError included: damaged root / slides group metadata
            raise StoreError(f"cannot consolidate the store's metadata ({type(e).__name__}: {str(e)[:160]})",
                             path=self.path, fix="the store's root metadata is damaged: convert into a new --out "
                                                 "(complete slides of this store can be copied over)") from e

    def _recover_features(self, key: str) -> None:
        """Feature dim/dtype/encoder from a complete slide, when a crash hit between a slide's completion and
        the root update (the resumed run then skips every slide and would record nothing)."""
        g = self.path / schema.SLIDES_GROUP / key
        meta = json.loads((g / "features" / "zarr.json").read_text())
        self._set_features(meta["shape"][1], meta["data_type"])
        enc = json.loads((g / "zarr.json").read_text()).get("attributes", {}).get("encoder")
        if enc and not self.root.attrs.get("encoder"):
            self.root.attrs["encoder"] = enc

    def commit_overwrite(self) -> None:
        """The new store holds a complete slide: delete the store that --overwrite set aside."""
        if self._aside:
            try:
                discard_aside(self.path)
            except OSError as e:
                raise write_error(e, path=self.path / ASIDE_NAME, what="cannot delete the replaced store") from e
            self._aside = False

    def abandon_overwrite(self) -> bool:
        """No slide was written: put the store that --overwrite set aside back. True when it was put back."""
        if not self._aside:
            return False
        self._aside = False
        try:
            return restore_aside(self.path)
        except OSError as e:
            raise write_error(e, path=self.path / ASIDE_NAME, what="cannot put the replaced store back") from e

    def close(self) -> None:
        try:
            if self._aside and list_slide_keys(self.path, complete_only=True):
                self.commit_overwrite()
            elif self._aside:
                self.abandon_overwrite()
        finally:
            if self._lock is not None:
                try:
                    self._lock.release()
                finally:
                    self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def slide_is_complete(store_path: str | os.PathLike, slide_id: str) -> bool:
    """Whether the slide's group in the store at ``store_path`` is marked complete (no store object needed)."""
    p = Path(store_path) / schema.SLIDES_GROUP / slide_key(slide_id) / "zarr.json"
    try:
        return bool(json.loads(p.read_text()).get("attributes", {}).get("complete"))
    except (OSError, ValueError, AttributeError):  # absent, unreadable, name too long, not a JSON object
        return False


WRITE_FIX = ("free disk space or fix the output folder's permissions, then re-run the same command: it resumes "
             "(complete slides are kept)")
RESUME = "then re-run the same command: it resumes (complete slides are kept)"


def _write_fix(e: OSError, path, slide: str | None) -> tuple[str, str]:
    """(cause, fix) of a failed write, by its errno."""
    err = e.errno
    if err == errno.ENOSPC or err == errno.EDQUOT:
        return "the disk or your quota is full", f"free disk space, {RESUME}"
    if err in (errno.EACCES, errno.EPERM):
        return "no write permission", f"make the output folder writable for you, {RESUME}"
    if err == errno.EROFS:
        return ("the output is on a read-only file system", "a store there can be read (inspect, samtrain fit) but not "
                "written: convert with --out on a writable file system, or remount it read-write")
    if err == errno.ENAMETOOLONG:
        what = f"the store's group name for slide {slide!r}" if slide else "a path"
        return (f"file name too long: {what} exceeds the file system's limit (usually 255 bytes per name)",
                "shorten the slide's file name (the slide id comes from it) or use a shorter --out path")
    return "", WRITE_FIX


def write_error(e: OSError, *, path, slide: str | None = None, what: str = "cannot write to the store") -> StoreError:
    """A StoreError for an OSError (disk full, permission denied, read-only, name too long, ...) naming the file,
    the real cause and its fix."""
    where = f": {e.filename}" if getattr(e, "filename", None) else ""
    cause, fix = _write_fix(e, path, slide)
    msg = f"{what} ({e.strerror or type(e).__name__}{where})" + (f": {cause}" if cause else "")
    return StoreError(msg, slide=slide, path=path, fix=fix)


def write_slide_group(store_path: str | os.PathLike, s: SlideArrays, *, clevel: int | None = None,
                      codec: str = DEFAULT_CODEC) -> None:
    """Write one slide group (usable from a worker process: touches only this slide's files).

    Raises:
        StoreError: the slide cannot be written (disk full, permission denied): names the slide and its
            group folder; the partial group is removed (best effort), the rest of the store is untouched.
    """
    gdir = Path(store_path) / schema.SLIDES_GROUP / slide_key(s.slide_id)
    try:
        _write_slide_group(gdir, s, clevel=resolve_clevel(codec, clevel), codec=codec)
    except OSError as e:
        shutil.rmtree(gdir, ignore_errors=True)
        raise write_error(e, path=gdir, slide=s.slide_id, what="cannot write the slide") from e


def _layout(data: np.ndarray) -> tuple[int, int]:
    """(inner chunk rows, shard rows) of one array: ~CHUNK_BYTES chunks, one shard covering every row."""
    row_bytes = int(np.prod(data.shape[1:], dtype=np.int64)) * data.dtype.itemsize if data.ndim else 8
    rows = chunk_rows(row_bytes)
    n = data.shape[0]
    rows = min(rows, max(1, 1 << max(n - 1, 0).bit_length()))  # no huge chunks for tiny arrays
    return rows, max(rows, -(-n // rows) * rows)


def _write_slide_group(gdir: Path, s: SlideArrays, *, clevel: int, codec: str) -> None:
    """Group metadata first (without ``complete``), then each array as one streamed shard
    (:mod:`clam2sam.store.fast_write`), then the metadata again with ``complete`` (atomic rename)."""
    if gdir.exists():  # incomplete or being overwritten: start clean
        shutil.rmtree(gdir)
    gdir.mkdir(parents=True)
    attrs = {k: jsonable(v) for k, v in s.attrs.items() if k != "complete"}
    attrs.update(slide_id=s.slide_id, n_patches=s.n_patches, n_segments=s.n_segments)
    group_meta = {"attributes": attrs, "zarr_format": 3, "node_type": "group"}
    write_json(gdir / "zarr.json", group_meta)
    for name in schema.ALL_ARRAYS:
        data = np.asarray(getattr(s, name))
        if name in schema.DTYPES:
            data = data.astype(schema.DTYPES[name], copy=False)
        if data.ndim == 0 or data.dtype.kind not in "fiu":
            raise StoreError(f"array {name!r} has dtype {data.dtype} / shape {data.shape}", slide=s.slide_id,
                             fix="this is a bug in the producer of the arrays")
        rows, shard_rows = _layout(data)
        if name == "features":
            maybe_die("features")
        write_array(gdir / name, data, rows=rows, shard_rows=shard_rows, codec=codec, clevel=clevel)
        maybe_die("array")
    maybe_die("complete")
    group_meta["attributes"] = {**attrs, "complete": True}
    write_json(gdir / "zarr.json", group_meta)  # last write: marks the slide done
    maybe_die("written")


from clam2sam.store.reader import (  # noqa: E402 - re-exported: the public API lives here
    StoreReader, list_slide_keys, open_store)

"""Write SAM-MIL-compatible ``segments/<id>.pkl`` files from the SAM cache.

Layout written (what SAM-MIL's step 01 writes and its step 02/03 scripts read)::

    [image_info, mask_0, mask_1, ...]
    image_info = {'patch_size': int, 'start_x', 'start_y', 'stop_x', 'stop_y', 'w', 'h': numpy.int32,
                  'vis_level': int, 'downsample_ratio': int}
    mask_i     = {'segmentation': bool (H, W), 'area': int, 'bbox': [x, y, w, h] ints,
                  'predicted_iou': float, 'point_coords': [[x, y]], 'stability_score': float,
                  'crop_box': [x, y, w, h] (ints, or floats when SAM produced floats)}

One pickle (protocol 5), streamed mask by mask so that memory stays at one dense mask. numpy globals are
written under their numpy-1 names (``numpy.core.multiarray.scalar``, ``numpy.core.numeric._frombuffer``,
``numpy.dtype``), exactly the three globals SAM-MIL's own pickles reference: numpy 1.x (SAM-MIL's
environments) and numpy 2.x both read them.
"""
from __future__ import annotations

import io
import os
import pickle
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clam2sam.sam import cache as sam_cache
from clam2sam.errors import StoreError, UsageError
from clam2sam.masks import SamGeometry


class _Numpy1Pickler(pickle._Pickler):  # noqa: SLF001 - the pure-Python pickler lets us rename globals
    """Pickler that writes ``numpy._core.*`` globals as ``numpy.core.*`` (readable by numpy 1 and 2)."""

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None) or ""
        if not module.startswith("numpy._core"):
            return super().save_global(obj, name)
        name = name or obj.__qualname__
        self.save("numpy.core" + module[len("numpy._core"):])
        self.save(name)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)

    # the base class dispatches Python functions (numpy's _frombuffer) straight to its own save_global
    dispatch = {**pickle._Pickler.dispatch, types.FunctionType: save_global}  # noqa: SLF001


def write_segments_pickle(path: str | os.PathLike, image_info: dict, records) -> int:
    """Stream ``[image_info, *records]`` into ``path`` (atomic: tmp + rename). Returns bytes written."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        p = _Numpy1Pickler(f, protocol=5)
        p.write(pickle.PROTO + bytes([5]))
        p.framer.start_framing()
        p.write(pickle.EMPTY_LIST)  # the list is not memoized: nothing refers back to it
        for item in _chain(image_info, records):
            n_before = len(p.memo)
            p.save(item)
            p.write(pickle.APPEND)
            _forget(p, n_before)
        p.write(pickle.STOP)
        p.framer.end_framing()
    os.replace(tmp, path)
    return path.stat().st_size


def _forget(p: pickle._Pickler, n_before: int) -> None:  # noqa: SLF001
    """Drop the objects memoized while saving the last item, keeping the memo's size.

    The unpickler numbers memo entries by count (MEMOIZE), so the size must stay; the ``id()`` keys go
    (a later object reusing an id must not turn into a back-reference) and so do the references (the
    mask's bytes), which keeps memory at one mask.
    """
    new = []
    for i, key in enumerate(reversed(p.memo)):
        if i >= len(p.memo) - n_before:
            break
        new.append(key)
    for key in new:
        idx, _ = p.memo.pop(key)
        p.memo[("forgotten", idx)] = (idx, None)


def _chain(first, rest):
    yield first
    yield from rest


def image_info_for(geom: SamGeometry, patch_size) -> dict:
    """SAM-MIL's ``image_info`` for a geometry (bbox values as numpy.int32, like SAM-MIL's)."""
    stop_x = geom.stop_x if geom.stop_x is not None else geom.start_x + geom.width * geom.total_downsample
    stop_y = geom.stop_y if geom.stop_y is not None else geom.start_y + geom.height * geom.total_downsample
    i32 = np.int32
    return {"patch_size": int(round(float(patch_size))) if patch_size is not None else None,
            "start_x": i32(geom.start_x), "start_y": i32(geom.start_y), "stop_x": i32(stop_x), "stop_y": i32(stop_y),
            "w": i32(stop_x - geom.start_x), "h": i32(stop_y - geom.start_y),
            "vis_level": int(geom.vis_level), "downsample_ratio": int(geom.downsample_ratio)}


def sam_records(em: sam_cache.EncodedMasks):
    """SAM's records with a dense bool ``segmentation``, one at a time, in SAM's key order."""
    for m, rec in enumerate(em.records()):
        yield {"segmentation": em.mask(m), "area": rec["area"], "bbox": rec["bbox"],
               "predicted_iou": rec["predicted_iou"], "point_coords": rec["point_coords"],
               "stability_score": rec["stability_score"], "crop_box": rec["crop_box"]}


@dataclass
class Exported:
    slide_id: str
    path: Path
    n_masks: int
    pickle_bytes: int
    cache_bytes: int


def resolve_cache_dir(store_or_cache: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder for a store path (``<store>/sam_cache``) or a cache folder given directly."""
    if cache_dir is not None:
        return Path(cache_dir)
    p = Path(store_or_cache)
    if (p / "zarr.json").is_file() or (p / sam_cache.CACHE_DIRNAME).is_dir():
        return p / sam_cache.CACHE_DIRNAME
    return p


def export_segments(store_or_cache: str | os.PathLike, out_dir: str | os.PathLike, *, slides=(),
                    cache_dir: str | os.PathLike | None = None, overwrite: bool = False,
                    patch_size: float | None = None) -> list[Exported]:
    """Write ``<out_dir>/<slide_id>.pkl`` for every cached slide (or ``slides``).

    Args:
        store_or_cache: the store (its ``sam_cache/`` is read) or a cache folder.
        out_dir: folder for the pickles (pass it to SAM-MIL as ``--data_segment_dir`` or to
            ``clam2sam convert --segments-dir``).
        slides: restrict to these slide ids.
        overwrite: replace existing pickles (default: refuse).
        patch_size: ``image_info['patch_size']`` when the cache does not know it.

    Raises:
        StoreError: no cache, or a requested slide has no complete cache entry.
        UsageError: a pickle exists and ``overwrite`` is False.
    """
    cdir = resolve_cache_dir(store_or_cache, cache_dir)
    have = sam_cache.list_cached(cdir)
    if not have:
        raise StoreError("no SAM results cached here", path=cdir,
                         fix="run `clam2sam convert ... --sam-checkpoint PATH` first, or pass --sam-cache DIR")
    wanted = list(slides) if slides else have
    missing = [s for s in wanted if s not in have]
    if missing:
        raise StoreError(f"no cached SAM result for {', '.join(map(repr, missing[:5]))}", path=cdir,
                         fix="check the ids (`clam2sam export-segments STORE --out DIR` lists what is cached)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for sid in wanted:
        target = out / f"{sid}.pkl"
        if target.exists() and not overwrite:
            raise UsageError("segments pickle exists", slide=sid, path=target, fix="pass --overwrite or another --out")
        em, geom, attrs = sam_cache.read_cache(cdir, sid)
        ps = attrs.get("patch_size") if attrs.get("patch_size") is not None else patch_size
        if ps is None:
            raise UsageError("the patch size is not recorded in the cache", slide=sid,
                             fix="pass --patch-size PIXELS (level-0 patch side)")
        nbytes = write_segments_pickle(target, image_info_for(geom, ps), sam_records(em))
        done.append(Exported(sid, target, em.n_masks, nbytes,
                             sam_cache.disk_bytes(sam_cache.slide_cache_path(cdir, sid))))
    return done


def pickle_bytes_of(image_info: dict, records: list[dict]) -> bytes:
    """In-memory variant (tests)."""
    buf = io.BytesIO()
    p = _Numpy1Pickler(buf, protocol=5)
    p.dump([image_info, *records])
    return buf.getvalue()

"""Cohort and slide statistics of a store, as plain JSON-ready dicts (the numbers behind ``inspect``).

Pure functions over a :class:`~clam2sam.store.writer.StoreReader`: no printing, no click. Every key listed
in ``docs/inspect.md`` is always present (``None`` when a number is not defined, e.g. ``area_um2``
quantiles when the microns-per-pixel are unknown), so scripts can rely on them.

Reads per slide only the small arrays (segment arrays, CSR membership, group features) plus the
array *metadata* of ``features``; patch features themselves are never loaded.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from clam2sam.store import schema
from clam2sam.errors import Clam2SamError
from clam2sam.store.fast_read import read_whole_array
from clam2sam.ids import slide_key
from clam2sam.jsonable import jsonable
from clam2sam.store.reader import StoreReader

QUANTILE_KEYS = ("n", "min", "p10", "p25", "median", "p75", "p90", "max", "mean")
_SLIDE_ARRAYS = ("segment_sizes", "segment_areas", "segment_areas_um2", "segment_sam_area",
                 "segment_source_index", "group_features", "member_indptr", "member_indices", "segment_ids")


def describe(values) -> dict:
    """Quantiles of the finite values: keys ``QUANTILE_KEYS`` (``None`` when there are none)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {k: (0 if k == "n" else None) for k in QUANTILE_KEYS}
    q = np.quantile(v, [0.10, 0.25, 0.5, 0.75, 0.90])
    return {"n": int(v.size), "min": float(v.min()), "p10": float(q[0]), "p25": float(q[1]),
            "median": float(q[2]), "p75": float(q[3]), "p90": float(q[4]), "max": float(v.max()),
            "mean": float(v.mean())}


def disk_usage(path: str | os.PathLike) -> dict:
    """Bytes on disk (apparent file sizes) and uncompressed bytes of every array under ``path``.

    Uncompressed bytes come from each array's ``zarr.json`` (shape x item size), so nothing is read.

    Returns:
        ``{"disk_bytes", "uncompressed_bytes", "compression_ratio"}`` (ratio ``None`` for an empty tree).
    """
    disk = unc = 0
    stack = [os.fspath(path)]
    while stack:          # os.scandir: file types from the directory listing, one stat per file
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for entry in it:
                try:
                    if entry.is_dir():                  # as os.walk: links to folders are not followed
                        if not entry.is_symlink():
                            stack.append(entry.path)
                        continue
                    disk += entry.stat(follow_symlinks=True).st_size
                except OSError:
                    continue
                if entry.name == "zarr.json":
                    unc += _array_nbytes(entry.path)
    return {"disk_bytes": int(disk), "uncompressed_bytes": int(unc),
            "compression_ratio": (unc / disk) if disk else None}


def _array_nbytes(zarr_json: str | Path) -> int:
    try:
        with open(zarr_json, encoding="utf-8") as f:
            meta = json.loads(f.read())
    except (OSError, ValueError):
        return 0
    if meta.get("node_type") != "array":
        return 0
    try:
        item = np.dtype(meta["data_type"]).itemsize
    except (TypeError, KeyError):
        return 0
    return int(np.prod(meta.get("shape", []), dtype=np.int64)) * item


def store_info(reader: StoreReader) -> dict:
    """Root attrs and disk usage of the whole store."""
    a = reader.attrs
    out = {"path": str(reader.path), "schema_version": a.get("schema_version"),
           "tool_version": a.get("tool_version"), "created": a.get("created"), "encoder": a.get("encoder"),
           "membership": a.get("membership")}
    out.update(disk_usage(reader.path))
    return out


def _covered(indptr: np.ndarray, indices: np.ndarray, n: int) -> tuple[int, int]:
    """(patches in >= 1 segment, patches in >= 2 segments) from CSR membership."""
    if n == 0 or indices.size == 0:
        return 0, 0
    counts = np.bincount(indices.astype(np.int64), minlength=n)
    return int((counts > 0).sum()), int((counts > 1).sum())


def _read(g, slide_id: str, name: str, reader: StoreReader) -> np.ndarray:
    """One array of an open slide group (one group open per slide, not per array)."""
    try:
        return g[name][...]
    except Exception:  # noqa: BLE001 - let the reader phrase the error (missing / unreadable)
        return reader.read_array(slide_id, name)


_GROUP_KEYS = {"attributes", "zarr_format", "node_type"}     # a slide group's zarr.json, as the store writes it
_ARRAY_KEYS = {"shape", "data_type", "chunk_grid", "chunk_key_encoding", "fill_value", "codecs", "attributes",
               "zarr_format", "node_type", "storage_transformers", "dimension_names"}


def _read_fast(reader: StoreReader, slide_id: str) -> tuple[dict, tuple, str, dict] | None:
    """(small arrays, features shape, features dtype, slide attrs) read without zarr: the arrays through the
    store's own single-shard reader, the shape and dtype from ``features/zarr.json``, the attrs from the group's
    ``zarr.json`` (read once). ``None`` when anything is not as this tool writes it; the zarr path then reads
    it, or phrases the error."""
    gdir = os.path.join(reader.path, schema.SLIDES_GROUP, slide_key(slide_id))
    try:
        with open(os.path.join(gdir, "zarr.json"), "rb") as f:
            group = json.loads(f.read())
        with open(os.path.join(gdir, "features", "zarr.json"), "rb") as f:
            meta = json.loads(f.read())
        if (set(group) != _GROUP_KEYS or group["zarr_format"] != 3 or group["node_type"] != "group"
                or not isinstance(group["attributes"], dict)):
            return None
        if (not set(meta) <= _ARRAY_KEYS or meta["zarr_format"] != 3 or meta["node_type"] != "array"
                or meta["data_type"] not in schema.FEATURE_DTYPES
                or [c.get("name") for c in meta["codecs"]] != ["sharding_indexed"]):
            return None
        shape, dtype = tuple(int(n) for n in meta["shape"]), str(np.dtype(meta["data_type"]))
        data = {}
        for name in _SLIDE_ARRAYS:
            data[name] = read_whole_array(os.path.join(gdir, name))
            if data[name] is None:
                return None
    except Exception:  # noqa: BLE001 - damaged or foreign: the zarr path reports it as before
        return None
    return data, shape, dtype, group["attributes"]


def _read_core(reader: StoreReader, slide_id: str) -> dict:
    """Everything the statistics need for one slide (small arrays only)."""
    fast = _read_fast(reader, slide_id)
    attrs = None
    if fast is not None:
        data, shape, dtype, attrs = fast
    else:
        g = reader.group(slide_id)
        try:
            feats = g["features"]
        except Exception:  # noqa: BLE001 - missing / unparseable zarr.json: let the reader phrase the error
            reader.read_array(slide_id, "features")
            raise
        data = {name: _read(g, slide_id, name, reader) for name in _SLIDE_ARRAYS}
        shape, dtype = feats.shape, str(feats.dtype)
    data["n_patches"] = int(shape[0])
    data["feature_dim"] = int(shape[1]) if len(shape) > 1 else None
    data["feature_dtype"] = dtype
    data["attrs"] = reader.slide_attrs(slide_id) if attrs is None else attrs
    gf = data["group_features"].astype(np.float64)
    data["gf_norm"] = np.linalg.norm(gf, axis=1) if gf.ndim == 2 and len(gf) else np.zeros(0)
    covered, multi = _covered(data["member_indptr"], data["member_indices"], data["n_patches"])
    data["covered"], data["multi"] = covered, multi
    return data


def flatten_scalars(d: dict, prefix: str = "") -> dict:
    """Scalar leaves of a nested dict under dotted keys (lists and None skipped)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_scalars(v, key + "."))
        elif isinstance(v, (str, int, float, bool)):
            out[key] = v
    return out


def sam_provenance(sam_dicts: list[dict], top: int = 5) -> dict:
    """Distinct values of every scalar SAM attr over slides: ``{key: {"distinct": n, "top": {value: count}}}``."""
    per_key: dict[str, Counter] = {}
    for d in sam_dicts:
        for k, v in flatten_scalars(d or {}).items():
            per_key.setdefault(k, Counter())[v if isinstance(v, str) else json.dumps(v)] += 1
    return {k: {"distinct": len(c), "top": dict(c.most_common(top))} for k, c in sorted(per_key.items())}


def cohort_stats(reader: StoreReader, *, on_slide: Callable[[str], None] | None = None) -> dict:
    """Statistics of every complete slide of the store (keys documented in ``docs/inspect.md``).

    Args:
        reader: an open store.
        on_slide: called with each slide id after it is read (progress bars).

    Returns:
        A JSON-ready dict. Slides whose arrays cannot be read are listed under ``errors`` and left out
        of the numbers.
    """
    ids = reader.slide_ids()
    done = set(ids)   # = reader.incomplete_slide_ids(), without listing the complete slides a second time
    incomplete = [s for s in reader.slide_ids(complete_only=False) if s not in done]
    n_patches, n_segments, cov_share, rows, errors = [], [], [], [], []
    sizes, areas, areas_um2, norms, sam_dicts = [], [], [], [], []
    labels, rules, layouts = Counter(), Counter(), Counter()
    unlabelled = covered = multi = no_seg = 0
    dims, dtypes = Counter(), Counter()
    for sid in ids:
        try:
            c = _read_core(reader, sid)
        except (Clam2SamError, KeyError, ValueError) as e:
            errors.append({"slide": sid, "message": str(e)})
            continue
        finally:
            if on_slide:
                on_slide(sid)
        a, N, S = c["attrs"], c["n_patches"], len(c["segment_sizes"])
        n_patches.append(N)
        n_segments.append(S)
        no_seg += S == 0
        share = c["covered"] / N if N else None
        cov_share.append(np.nan if share is None else share)
        covered += c["covered"]
        multi += c["multi"]
        sizes.append(c["segment_sizes"])
        areas.append(c["segment_areas"])
        areas_um2.append(c["segment_areas_um2"])
        norms.append(c["gf_norm"])
        dims[c["feature_dim"]] += 1
        dtypes[c["feature_dtype"]] += 1
        if a.get("label") is None:
            unlabelled += 1
        else:
            labels[str(a["label"])] += 1
        rules[str(a.get("membership") or reader.attrs.get("membership"))] += 1
        layouts[str(a.get("layout"))] += 1
        if a.get("sam"):
            sam_dicts.append(a["sam"])
        rows.append({"slide_id": sid, "label": a.get("label"), "n_patches": N, "n_segments": S,
                     "coverage": share,
                     "median_segment_size": float(np.median(c["segment_sizes"])) if S else None})
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0))
    total = int(sum(n_patches))
    return {
        "kind": "cohort",
        "store": store_info(reader),
        "slides": {"complete": len(ids), "incomplete": len(incomplete), "incomplete_ids": incomplete,
                   "unreadable": len(errors)},
        "features": {"dim": reader.attrs.get("feature_dim"), "dtype": reader.attrs.get("feature_dtype"),
                     "slide_dims": {str(k): v for k, v in dims.items()}, "slide_dtypes": dict(dtypes)},
        "patches": {"total": total, "per_slide": describe(n_patches)},
        "labels": {"counts": dict(sorted(labels.items())), "unlabelled": unlabelled},
        "segments": {"total": int(sum(n_segments)), "per_slide": describe(n_segments),
                     "slides_without_segments": int(no_seg), "size_patches": describe(cat(sizes)),
                     "area_level0_px": describe(cat(areas)), "area_um2": describe(cat(areas_um2))},
        "coverage": {"share": covered / total if total else None, "covered": covered,
                     "unassigned": total - covered, "multi_member": multi, "per_slide": describe(cov_share)},
        "group_feature_norm": describe(cat(norms)),
        "membership": dict(rules),
        "layouts": dict(layouts),
        "sam": {"slides_with_sam": len(sam_dicts), "provenance": sam_provenance(sam_dicts)},
        "slide_table": rows,
        "errors": errors,
    }


def slide_stats(reader: StoreReader, slide_id: str, *, top: int = 10) -> dict:
    """Statistics of one complete slide plus its ``top`` largest segments (by level-0 area, then size).

    Raises:
        StoreError: the slide is missing, incomplete or unreadable.
    """
    from clam2sam.errors import StoreError

    a = reader.slide_attrs(slide_id)
    if not a.get("complete"):
        raise StoreError("slide is incomplete (its conversion was interrupted)", slide=slide_id,
                         path=reader.path, fix="re-run `clam2sam convert` to resume")
    c = _read_core(reader, slide_id)
    coords = reader.read_array(slide_id, "coords")
    N, S = c["n_patches"], len(c["segment_sizes"])
    ps = a.get("patch_size_level0")
    if N:
        x0, y0 = coords.min(0).tolist()
        x1, y1 = coords.max(0).tolist()
        extent = {"x_min": int(x0), "y_min": int(y0), "x_max": int(x1 + (ps or 0)), "y_max": int(y1 + (ps or 0))}
    else:
        extent = {"x_min": None, "y_min": None, "x_max": None, "y_max": None}
    order = np.lexsort((-c["segment_sizes"], -c["segment_areas"]))[:top] if S else []
    largest = [{
        "segment": int(k), "source_index": int(c["segment_source_index"][k]),
        "n_patches": int(c["segment_sizes"][k]), "area_level0_px": _num(c["segment_areas"][k]),
        "area_um2": _num(c["segment_areas_um2"][k]), "sam_area": int(c["segment_sam_area"][k]),
        "group_feature_norm": _num(c["gf_norm"][k]),
    } for k in order]
    return {
        "kind": "slide",
        "store": store_info(reader),
        "slide_id": slide_id,
        "label": a.get("label"), "case_id": a.get("case_id"), "layout": a.get("layout"),
        "membership": a.get("membership") or reader.attrs.get("membership"),
        "mpp": a.get("mpp"), "patch_size_level0": ps,
        "features": {"dim": c["feature_dim"], "dtype": c["feature_dtype"]},
        "patches": {"total": N, "extent_level0": extent},
        "segments": {"total": S, "size_patches": describe(c["segment_sizes"]),
                     "area_level0_px": describe(c["segment_areas"]), "area_um2": describe(c["segment_areas_um2"]),
                     "empty": int((c["segment_sizes"] == 0).sum())},
        "coverage": {"share": c["covered"] / N if N else None, "covered": c["covered"],
                     "unassigned": N - c["covered"], "multi_member": c["multi"]},
        "group_feature_norm": describe(c["gf_norm"]),
        "sam": a.get("sam") or {},
        "sources": a.get("sources") or [],
        "disk": disk_usage(reader.path / schema.SLIDES_GROUP / slide_key(slide_id)),
        "largest_segments": largest,
    }


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def to_json(d: dict) -> str:
    """Strict JSON text (NaN/inf become ``null``)."""
    return json.dumps(jsonable(d), indent=2, allow_nan=False)

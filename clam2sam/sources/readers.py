"""Read and validate one slide's features and level-0 coordinates from CLAM / TRIDENT / SAM-MIL files.

Files are opened read-only and each dataset is read in one call. Features keep their source float type, stored
little-endian (big-endian sources are byte-swapped; the source byte order is recorded as provenance).
SAM-MIL group rows (coords ``[-1, -1]`` or ``sam_info/<id>.h5`` ``is_group_feat == 1``) are dropped.
Legacy CLAM coordinates (patch-level frame; an ``imgs`` dataset in the patches h5) are scaled to level 0.
"""
from __future__ import annotations

import contextlib
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from clam2sam.sources.discover import SlideFiles
from clam2sam.errors import Clam2SamError, InputFormatError, LegacyFormatError
from clam2sam.sources.safe_load import load_pt_array

LEGACY_FLAG = "--legacy-downsample"
PATCH_SIZE_FLAG = "--patch-size-level0"


@dataclass
class LoadedSlide:
    """One slide's validated patch rows (group rows removed). N patches, D feature dim."""

    slide_id: str
    layout: str
    features: np.ndarray                 # (N, D) source dtype
    coords: np.ndarray                   # (N, 2) int64 level-0 top-left
    patch_size_level0: float | None
    patch_info: dict = field(default_factory=dict)   # geometry provenance (patches h5 attrs, ...)
    encoder: str | None = None
    n_group_rows: int = 0
    warnings: list[str] = field(default_factory=list)
    sources: list[tuple[str, Path]] = field(default_factory=list)
    source_byte_order: str = "little"    # byte order of the source features (stored little-endian)
    coords_path: Path | None = None      # the file the coords were read from (features h5 or patches h5)


BYTE_ORDERS = {"<": "little", ">": "big", "|": "not applicable"}


def _byte_order(dt: np.dtype) -> str:
    """'<', '>' or '|' (native '=' resolved)."""
    bo = dt.byteorder
    if bo == "=":
        import sys
        return "<" if sys.byteorder == "little" else ">"
    return bo


def _row_mismatch(files: SlideFiles, sid: str, n_coords: int, n_feat: int, *, coords_from_h5: bool
                  ) -> InputFormatError:
    """The error for coords and features of different lengths, naming where each came from and the likely cause."""
    feat_path = files.features_h5 or files.features_pt
    if coords_from_h5:
        return InputFormatError(
            f"coords have {n_coords} rows but features have {n_feat}, both in this h5: the file is inconsistent, "
            "e.g. written by an interrupted or faulty extraction", slide=sid, path=files.features_h5,
            fix="re-extract this slide (or remove it and use --skip-errors to go on)")
    where = f"the patches h5 {files.patches_h5}"
    if files.features_h5 is None and n_coords < n_feat and files.sam_info_h5 is None:
        return InputFormatError(
            f"coords have {n_coords} rows ({where}) but features have {n_feat} (the .pt): if this is a SAM-MIL .pt, its "
            f"{n_feat - n_coords} extra rows are group features appended after the patches", slide=sid, path=feat_path,
            fix="pass SAM-MIL's sam_info/ folder with --sam-info-dir (it marks the group rows), or convert from the "
                "h5 files; otherwise the .pt and the patches h5 are from different runs: re-extract the slide")
    return InputFormatError(
        f"coords have {n_coords} rows ({where}) but features have {n_feat}: they come from different patching or "
        "extraction runs", slide=sid, path=feat_path,
        fix=f"re-extract the slide's features from {files.patches_h5}, or pass the patches/ folder of the run that "
            "produced these features with --patches-dir")


def _attr(v):
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return None if v == "None" else v


def _open(path: Path, slide: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise InputFormatError(f"unreadable or truncated HDF5 file ({e})", slide=slide, path=path,
                               fix="re-extract this slide, or remove the file (use --skip-errors to go on)") from e


@contextlib.contextmanager
def _guard(path: Path | None, slide: str):
    """Turn any unexpected exception of a damaged file (h5py KeyError / RuntimeError, odd dtypes, ...) into an
    InputFormatError naming the slide and the file; the project's own errors pass through."""
    try:
        yield
    except Clam2SamError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt input may fail anywhere inside h5py / numpy / torch
        raise InputFormatError(f"unreadable or corrupt file ({type(e).__name__}: {str(e)[:200]})", slide=slide,
                               path=path, fix="re-extract this slide, or remove the file (use --skip-errors "
                                              "to go on)") from e


def _read(f: h5py.File, name: str, path: Path, slide: str) -> np.ndarray:
    try:
        return f[name][()]
    except (OSError, ValueError, RuntimeError) as e:
        raise InputFormatError(f"dataset {name!r} cannot be read (truncated or corrupt: {e})", slide=slide,
                               path=path, fix="re-extract this slide, or remove the file") from e


def pt_rows_direct(path: Path, pt: np.ndarray, rows: list[int]) -> np.ndarray | None:
    """``pt[rows]`` read with plain positioned reads (a few KB) instead of through the memory map, whose
    fault-around reads ~17 MB per sampled file (a third of a slide's .pt, on a slow disk a third of the h5's
    read time). Only for the common case: one uncompressed storage holding exactly this C-ordered array;
    otherwise None (the caller reads through the map)."""
    import re
    import struct
    import zipfile

    if not pt.flags.c_contiguous or pt.ndim != 2:
        return None
    try:
        with zipfile.ZipFile(path) as z:
            data = [i for i in z.infolist() if re.search(r"/data/\d+$", i.filename)]
        if len(data) != 1 or data[0].compress_type != zipfile.ZIP_STORED or data[0].file_size != pt.nbytes:
            return None
        row_bytes = pt.shape[1] * pt.itemsize
        out = np.empty((len(rows), pt.shape[1]), pt.dtype.newbyteorder("<"))
        with open(path, "rb", buffering=0) as f:
            f.seek(data[0].header_offset)
            hdr = f.read(30)
            if len(hdr) < 30 or hdr[:4] != b"PK\x03\x04":
                return None
            start = data[0].header_offset + 30 + sum(struct.unpack("<HH", hdr[26:30]))
            for k, r in enumerate(rows):
                f.seek(start + int(r) * row_bytes)
                b = f.read(row_bytes)
                if len(b) != row_bytes:
                    return None
                out[k] = np.frombuffer(b, out.dtype)
        return out.astype(pt.dtype, copy=False)
    except (OSError, ValueError, zipfile.BadZipFile, struct.error):
        return None


def _peek_pt(path: Path, slide: str) -> np.ndarray:
    """A .pt's array, memory-mapped when it is a plain tensor (cheap shape + sample checks); CLAM's plain
    tensors are mapped without importing torch (:mod:`clam2sam.sources.pt_header`), anything else goes through torch."""
    from clam2sam.sources.pt_header import map_plain_tensor

    mapped = map_plain_tensor(path)
    if mapped is not None:
        return mapped
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        if isinstance(obj, torch.Tensor):
            return obj.numpy()
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError):
        pass  # numpy payload (TRIDENT), old format or damaged: the safe loader decides and explains
    return load_pt_array(path, slide=slide)


def _read_patches(path: Path, slide: str, need_coords: bool
                  ) -> tuple[np.ndarray | int, dict, bool, tuple | None]:
    """Coords (or only their row count), coords attrs, legacy flag, ``imgs`` (shape, attrs) of a patches h5.

    CLAM writes these coords in (1, 2) chunks, so they are read only when the features lack coords.
    """
    with _guard(path, slide), _open(path, slide) as f:
        if "coords" not in f:
            raise InputFormatError("patches h5 has no 'coords' dataset", slide=slide, path=path,
                                   fix="pass the folder of create_patches_fp.py's patches/ with --patches-dir")
        coords = _read(f, "coords", path, slide) if need_coords else int(f["coords"].shape[0])
        attrs = {k: _attr(v) for k, v in f["coords"].attrs.items()}
        imgs = (f["imgs"].shape, {k: _attr(v) for k, v in f["imgs"].attrs.items()}) if "imgs" in f else None
    return coords, attrs, imgs is not None, imgs


def _patch_size_from_attrs(a: dict) -> float | None:
    if a.get("patch_size_level0") is not None:
        return float(a["patch_size_level0"])
    if a.get("patch_size") is not None and a.get("downsample") is not None:
        ds = a["downsample"]
        ds = ds[0] if isinstance(ds, (list, tuple)) else ds
        return float(a["patch_size"]) * float(ds)
    if a.get("patch_size") is not None and a.get("patch_level") in (0, None) and "target_magnification" not in a:
        return float(a["patch_size"])
    return None


def nonfinite_rows(features: np.ndarray) -> np.ndarray:
    """Indices of rows holding NaN or inf, in O(N) extra memory (no (N, D) boolean temporary).

    A row sum is non-finite whenever the row holds NaN or inf (no false negatives); a huge finite row may
    overflow the sum, so flagged rows are re-checked exactly.
    """
    acc = np.float32 if features.dtype.itemsize < 4 else None                   # float16 sums overflow early
    cand = np.flatnonzero(~np.isfinite(np.add.reduce(features, axis=1, dtype=acc)))  # (N,) row sums
    if cand.size == 0:
        return cand
    return cand[~np.isfinite(features[cand]).all(axis=1)]


def read_slide_inputs(files: SlideFiles, *, layout: str, patch_size_level0: float | None = None,
                      legacy_downsample: float | None = None, expect_pt: bool = False) -> LoadedSlide:
    """Read one slide's features + level-0 coords and validate them (see :func:`_read_slide_inputs`).

    Any unexpected exception from a damaged file becomes an InputFormatError naming the slide and the file.
    """
    with _guard(files.features_h5 or files.features_pt, files.slide_id):
        return _read_slide_inputs(files, layout=layout, patch_size_level0=patch_size_level0,
                                  legacy_downsample=legacy_downsample, expect_pt=expect_pt)


def _read_slide_inputs(files: SlideFiles, *, layout: str, patch_size_level0: float | None = None,
                       legacy_downsample: float | None = None, expect_pt: bool = False) -> LoadedSlide:
    """Read one slide's features + level-0 coords and validate them.

    Args:
        files: from :func:`clam2sam.sources.discover.discover`.
        layout: archive layout; ``clam-legacy`` forces patch-level-frame coordinates.
        patch_size_level0: override (else from the patches h5 / TRIDENT attrs).
        legacy_downsample: level-0 pixels per patch-level pixel for legacy coordinates.
        expect_pt: warn when the h5 has no matching .pt (possibly incomplete CLAM extraction).

    Raises:
        InputFormatError / LegacyFormatError: each naming the slide, the file and the fix.
    """
    sid = files.slide_id
    out = LoadedSlide(slide_id=sid, layout=layout, features=np.zeros((0, 0)), coords=np.zeros((0, 2), np.int64),
                      patch_size_level0=None)
    feat_path = files.features_h5 or files.features_pt
    coords = None
    coords_from_h5 = False   # coords beside the features in one h5 (else from the patches h5)
    coord_attrs: dict = {}
    if files.features_h5 is not None:
        out.sources.append(("features_h5", files.features_h5))
        with _guard(files.features_h5, sid), _open(files.features_h5, sid) as f:
            if "features" not in f:
                raise InputFormatError(f"no 'features' dataset (has {list(f.keys())})", slide=sid,
                                       path=files.features_h5, fix="pass CLAM's h5_files/ (not patches/) folder")
            features = _read(f, "features", files.features_h5, sid)
            out.encoder = _attr(f["features"].attrs.get("encoder"))
            if "coords" in f:
                coords = _read(f, "coords", files.features_h5, sid)
                coords_from_h5 = True
                out.coords_path = files.features_h5
                coord_attrs = {k: _attr(v) for k, v in f["coords"].attrs.items()}
            if "imgs" in f:
                out.layout = "clam-legacy"
        if files.features_pt is not None:
            out.sources.append(("features_pt", files.features_pt))
            with _guard(files.features_pt, sid):
                pt = _peek_pt(files.features_pt, sid)
            if pt.shape[0] != features.shape[0]:
                raise InputFormatError(
                    f".pt has {pt.shape[0]} rows but the h5 has {features.shape[0]}", slide=sid,
                    path=files.features_pt, fix="one of them is from an interrupted or older extraction: "
                                                "re-extract the slide, or remove the stale file")
            rows = sorted({0, features.shape[0] // 2, features.shape[0] - 1}) if features.shape[0] else []
            sample = pt_rows_direct(files.features_pt, pt, rows) if pt.shape[1:] == features.shape[1:] else None
            if sample is None and pt.shape[1:] == features.shape[1:]:
                sample = pt[rows]
            if pt.shape[1:] != features.shape[1:] or not np.array_equal(
                    np.asarray(sample, dtype=np.float64), features[rows].astype(np.float64)):
                raise InputFormatError(f".pt features differ from the h5 features ({files.features_h5})",
                                       slide=sid, path=files.features_pt,
                                       fix="re-extract the slide, or remove the stale file")
            del pt
        elif expect_pt:
            out.warnings.append(f"slide {sid!r}: {files.features_h5}: no matching .pt file: possibly incomplete "
                                "extraction (CLAM writes the .pt last); converted from the h5")
    elif files.features_pt is not None:
        out.sources.append(("features_pt", files.features_pt))
        features = load_pt_array(files.features_pt, slide=sid)
    else:
        raise InputFormatError("no features file", slide=sid, fix="the slide has only patches; extract features")

    if features.ndim != 2:
        raise InputFormatError(
            f"features have shape {features.shape}: {features.ndim}-D, not a (patches, feature dim) matrix",
            slide=sid, path=feat_path,
            fix="pass the per-patch features of a patch encoder (CLAM h5_files/ or pt_files/, TRIDENT "
                "features_<encoder>/); a 1-D vector is one embedding (e.g. a slide-level encoder's), not a bag")
    if features.shape[0] == 0:
        raise InputFormatError(f"empty bag: features have shape {features.shape} (0 patches)", slide=sid,
                               path=feat_path, fix="the slide has no patches (no tissue found?): drop it from the "
                                                   "input, or use --skip-errors to record it and go on")
    if features.shape[1] == 0:
        raise InputFormatError(f"features have shape {features.shape}: 0 values per patch", slide=sid,
                               path=feat_path, fix="re-extract the slide: the encoder wrote no feature values")
    if features.dtype.kind != "f":
        raise InputFormatError(f"features dtype {features.dtype} is not floating point", slide=sid,
                               path=feat_path, fix="pass the encoder's float features")
    out.source_byte_order = BYTE_ORDERS[_byte_order(features.dtype)]
    if _byte_order(features.dtype) != "<":  # stored little-endian whatever the source wrote
        features = features.astype(features.dtype.newbyteorder("<"))

    # coordinates from the patches file when the features have none (pt-only), + geometry attrs
    patch_attrs: dict = {}
    patches_rows = None
    if files.patches_h5 is not None:
        out.sources.append(("patches_h5", files.patches_h5))
        pcoords, patch_attrs, legacy, imgs = _read_patches(files.patches_h5, sid, need_coords=coords is None)
        if legacy:
            out.layout = "clam-legacy"
            out.patch_info["imgs"] = {"shape": list(imgs[0]), **imgs[1]}
        if coords is None:
            coords = pcoords
            out.coords_path = files.patches_h5
        else:
            patches_rows = pcoords
    if coords is None:
        raise InputFormatError("features have no coordinates and no patches h5 was found", slide=sid, path=feat_path,
                               fix="pass the folder of create_patches_fp.py's patches/<id>.h5 with --patches-dir")
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise InputFormatError(f"coords have shape {coords.shape}, expected (N, 2)", slide=sid, path=feat_path,
                               fix="re-extract the slide")

    # SAM-MIL group rows
    group = (coords[:, 0] == -1) & (coords[:, 1] == -1) if coords.shape[0] == features.shape[0] else None
    if files.sam_info_h5 is not None:
        out.sources.append(("sam_info_h5", files.sam_info_h5))
        with _guard(files.sam_info_h5, sid), _open(files.sam_info_h5, sid) as f:
            if "is_group_feat" in f:
                flag = _read(f, "is_group_feat", files.sam_info_h5, sid).astype(bool).reshape(-1)
                if flag.shape[0] != features.shape[0]:
                    raise InputFormatError(f"is_group_feat has {flag.shape[0]} rows, features {features.shape[0]}",
                                           slide=sid, path=files.sam_info_h5,
                                           fix="sam_info is from another run: rerun 03_extract_sam_info.py")
                if coords.shape[0] == features.shape[0]:
                    group = flag | group
                else:  # pt-only SAM-MIL: patches h5 has no group rows
                    if coords.shape[0] != int((~flag).sum()):
                        raise InputFormatError(
                            f"{int((~flag).sum())} patch rows in the features but {coords.shape[0]} coords",
                            slide=sid, path=files.sam_info_h5, fix="inputs are from different runs")
                    group = flag
                    coords = np.concatenate([coords, np.full((int(flag.sum()), 2), -1, coords.dtype)])
    if group is not None and group.any():
        out.n_group_rows = int(group.sum())
        n_keep = features.shape[0] - out.n_group_rows
        if group[n_keep:].all():  # appended at the end (SAM-MIL): views, no copy
            features, coords = features[:n_keep], coords[:n_keep]
        else:
            features, coords = features[~group], coords[~group]
        if features.shape[0] == 0:
            raise InputFormatError("empty bag: only group-feature rows", slide=sid, path=feat_path,
                                   fix="drop the slide from the input")
    if coords.shape[0] != features.shape[0]:
        raise _row_mismatch(files, sid, coords.shape[0], features.shape[0], coords_from_h5=coords_from_h5)
    if patches_rows is not None and patches_rows != features.shape[0]:
        raise InputFormatError(
            f"features h5 has {features.shape[0]} patch rows, patches h5 has {patches_rows}", slide=sid,
            path=files.features_h5, fix=f"extraction was interrupted or {files.patches_h5} is from another "
                                        "patching run: re-extract the slide")
    rows = nonfinite_rows(features)
    if rows.size:
        raise InputFormatError(f"{rows.size} feature rows hold NaN or inf (first: row {int(rows[0])})", slide=sid,
                               path=feat_path, fix="re-extract the slide (check the encoder's precision), "
                                                   "or use --skip-errors to leave it out")

    coords = coords.astype(np.int64, copy=False)
    ps = _patch_size_from_attrs(patch_attrs) or _patch_size_from_attrs(coord_attrs)
    if out.layout == "clam-legacy":
        ds = legacy_downsample
        imgs_attrs = out.patch_info.get("imgs", {})
        if ds is None and imgs_attrs.get("downsample") is not None:
            d = imgs_attrs["downsample"]
            ds = float(d[0] if isinstance(d, (list, tuple)) else d)
        if ds is None:
            raise LegacyFormatError(
                "legacy CLAM coordinates are in the patch-level frame and the level downsample is unknown",
                slide=sid, path=files.patches_h5 or feat_path,
                fix=f"pass {LEGACY_FLAG} FACTOR (level-0 pixels per patch-level pixel, e.g. 4 for level 1 of a "
                    "40x svs; include any custom_downsample)")
        coords = np.rint(coords * float(ds)).astype(np.int64)
        side = imgs_attrs.get("shape", [None, None])[1]
        ps = float(side) * float(ds) if side else None
        out.patch_info["legacy_downsample"] = float(ds)
    if patch_size_level0 is not None:
        ps = float(patch_size_level0)
    out.patch_size_level0 = ps
    out.patch_info.update({k: v for k, v in (patch_attrs or coord_attrs).items()
                           if k not in ("save_path", "savetodir")})
    out.features, out.coords = features, coords
    return out

"""Compact on-disk cache of SAM pass results: ``<cache>/<slide_key>/`` (a Zarr v3 group per slide).

The default cache folder is ``<store>/sam_cache`` -- beside, not inside, the slide groups (the converter
rewrites slide groups; the cache survives that). It has no ``zarr.json`` of its own, so it is not part of
the store's hierarchy or its consolidated metadata. Layout of one slide::

    <cache>/<slide_key>/               zarr group; attrs: see below, ``complete`` written last
      mask_data       (T,)   int32 RLE counts | uint8 packed bits   (all masks concatenated)
      mask_offsets    (M+1,) int64  mask m is mask_data[mask_offsets[m]:mask_offsets[m+1]]
      areas           (M,)   int64  SAM-pixel areas (SAM's ``area``)
      bboxes          (M, 4) int64  XYWH as SAM writes them (w = x_max - x_min)
      predicted_iou   (M,)   float64
      stability_score (M,)   float64
      point_coords    (M, 2) float64  SAM-image (x, y) of the prompt point
      crop_boxes      (M, 4) float64  XYWH crop each mask came from

``encoding`` attr: ``"rle"`` = SAM's uncompressed RLE (column-major / Fortran order over (H, W); counts
alternate background/foreground, starting with background, possibly 0) or ``"packbits"`` =
``np.packbits`` of the row-major (H, W) mask. The smaller of the two is chosen per slide (RLE for
smooth masks, bits for noisy ones). Other attrs: ``geometry`` (SamGeometry dict), ``provenance``
(model, checkpoint sha256, parameters, versions, timings), ``cache_key`` (what must match for reuse),
``height``, ``width``, ``n_masks``, ``crop_box_float`` (SAM's record type quirk), ``patch_size``,
``dense_bytes`` (size of the same masks as dense bool arrays, as in a SAM-MIL pickle), ``complete``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clam2sam.errors import StoreError
from clam2sam.ids import slide_key
from clam2sam.masks import MaskSet, SamGeometry

CACHE_DIRNAME = "sam_cache"
CACHE_FORMAT = 1
_ARRAYS = ("areas", "bboxes", "predicted_iou", "stability_score", "point_coords", "crop_boxes")


# ------------------------------------------------------------------------------------------ RLE codec

def rle_decode(counts: np.ndarray, height: int, width: int) -> np.ndarray:
    """SAM's uncompressed RLE (column-major) -> ``(height, width)`` bool."""
    counts = np.asarray(counts, dtype=np.int64)
    ends = np.cumsum(counts)
    if ends.size and ends[-1] != height * width:
        raise ValueError(f"RLE covers {int(ends[-1])} pixels, expected {height * width}")
    starts = ends - counts
    edges = np.zeros(height * width + 1, np.int32)
    np.add.at(edges, starts[1::2], 1)        # odd runs are foreground
    np.add.at(edges, ends[1::2], -1)
    flat = np.cumsum(edges[:-1]) > 0          # (W*H,) in column-major order
    return flat.reshape(width, height).T


def rle_encode(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool -> SAM's uncompressed RLE counts (column-major, first run = background)."""
    flat = np.asarray(mask, dtype=bool).T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds)
    if flat.size and flat[0]:
        counts = np.concatenate([[0], counts])
    return counts.astype(np.int64)


# ------------------------------------------------------------------------------------ encoded masks

@dataclass
class EncodedMasks:
    """M masks of one SAM image in compact form plus SAM's per-mask records."""

    height: int
    width: int
    encoding: str                 # "rle" | "packbits"
    data: np.ndarray              # (T,) int32 counts or uint8 bits
    offsets: np.ndarray           # (M+1,) int64
    areas: np.ndarray             # (M,) int64
    bboxes: np.ndarray            # (M, 4) int64 XYWH
    predicted_iou: np.ndarray     # (M,) float64
    stability_score: np.ndarray   # (M,) float64
    point_coords: np.ndarray      # (M, 2) float64
    crop_boxes: np.ndarray        # (M, 4) float64
    crop_box_float: bool = False  # SAM wrote crop boxes as floats (see reference README 3.5)
    attrs: dict = field(default_factory=dict)

    @property
    def n_masks(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def dense_bytes(self) -> int:
        return self.n_masks * self.height * self.width

    def mask(self, m: int) -> np.ndarray:
        """Mask ``m`` as ``(H, W)`` bool."""
        chunk = self.data[self.offsets[m]:self.offsets[m + 1]]
        if self.encoding == "rle":
            return rle_decode(chunk, self.height, self.width)
        bits = np.unpackbits(chunk, count=self.height * self.width)
        return bits.reshape(self.height, self.width).astype(bool)

    def dense(self) -> np.ndarray:
        """All masks, ``(M, H, W)`` bool."""
        out = np.zeros((self.n_masks, self.height, self.width), dtype=bool)
        for m in range(self.n_masks):
            out[m] = self.mask(m)
        return out

    def records(self) -> list[dict]:
        """SAM's per-mask fields other than the segmentation, as plain Python (SAM's record types)."""
        out = []
        for m in range(self.n_masks):
            crop = self.crop_boxes[m].tolist() if self.crop_box_float else [int(v) for v in self.crop_boxes[m]]
            out.append({"area": int(self.areas[m]), "bbox": [int(v) for v in self.bboxes[m]],
                        "predicted_iou": float(self.predicted_iou[m]), "point_coords": [self.point_coords[m].tolist()],
                        "stability_score": float(self.stability_score[m]), "crop_box": crop})
        return out

    def to_maskset(self, geometry: SamGeometry, provenance: dict | None = None) -> MaskSet:
        recs = [{k: r[k] for k in ("predicted_iou", "stability_score", "point_coords", "crop_box")}
                for r in self.records()]
        return MaskSet(masks=self.dense(), areas=self.areas.astype(np.int64), bboxes=self.bboxes.astype(np.int64),
                       geometry=geometry, records=recs, provenance=dict(provenance or {}))

    def compacted(self) -> "EncodedMasks":
        """The same masks in whichever encoding is smaller (RLE int32 counts vs packed bits)."""
        rle_bytes = int(self.data.size) * 4 if self.encoding == "rle" else None
        bit_bytes = self.n_masks * ((self.height * self.width + 7) // 8)
        if self.encoding == "rle" and rle_bytes <= bit_bytes:
            return self
        if self.encoding == "packbits":
            return self
        rows = [np.packbits(self.mask(m).ravel()) for m in range(self.n_masks)]
        return _replace_data(self, "packbits", rows, np.uint8)


def _replace_data(em: EncodedMasks, encoding: str, chunks: list[np.ndarray], dtype) -> EncodedMasks:
    offsets = np.zeros(len(chunks) + 1, np.int64)
    np.cumsum([c.size for c in chunks], out=offsets[1:])
    data = np.concatenate(chunks).astype(dtype) if chunks else np.zeros(0, dtype)
    return EncodedMasks(em.height, em.width, encoding, data, offsets, em.areas, em.bboxes, em.predicted_iou,
                        em.stability_score, em.point_coords, em.crop_boxes, em.crop_box_float, dict(em.attrs))


def from_sam_records(records: list[dict], height: int, width: int) -> EncodedMasks:
    """Build from ``SamAutomaticMaskGenerator`` records (``uncompressed_rle`` or ``binary_mask`` mode)."""
    chunks = []
    for r in records:
        seg = r["segmentation"]
        counts = np.asarray(seg["counts"]) if isinstance(seg, dict) else rle_encode(seg)
        chunks.append(counts.astype(np.int32))
    crop_float = any(isinstance(v, float) for r in records for v in r["crop_box"])
    m = len(records)
    em = EncodedMasks(
        height=int(height), width=int(width), encoding="rle", data=np.zeros(0, np.int32),
        offsets=np.zeros(1, np.int64),
        areas=np.array([int(r["area"]) for r in records], np.int64),
        bboxes=np.array([[int(v) for v in r["bbox"]] for r in records], np.int64).reshape(m, 4),
        predicted_iou=np.array([float(r["predicted_iou"]) for r in records], np.float64),
        stability_score=np.array([float(r["stability_score"]) for r in records], np.float64),
        point_coords=np.array([r["point_coords"][0] for r in records], np.float64).reshape(m, 2),
        crop_boxes=np.array([r["crop_box"] for r in records], np.float64).reshape(m, 4),
        crop_box_float=crop_float)
    return _replace_data(em, "rle", chunks, np.int32)


# --------------------------------------------------------------------------------------------- keys

def cache_key(**parts) -> str:
    """Stable sha256 of the JSON of everything that determines a slide's masks."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def default_cache_dir(store: str | os.PathLike) -> Path:
    return Path(store) / CACHE_DIRNAME


def slide_cache_path(cache_dir: str | os.PathLike, slide_id: str) -> Path:
    return Path(cache_dir) / slide_key(slide_id)


# ------------------------------------------------------------------------------------------ read/write

def _compressor():
    from zarr.codecs import BloscCodec, BloscShuffle   # zarr only where the cache is read or written

    return BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.shuffle)


def write_cache(cache_dir: str | os.PathLike, slide_id: str, em: EncodedMasks, *, geometry: SamGeometry,
                provenance: dict, key: str, patch_size: int | float | None = None) -> Path:
    """Write one slide's masks (whole group replaced; ``complete`` attr last). Returns the group path."""
    gdir = slide_cache_path(cache_dir, slide_id)
    tmp = gdir.with_name(gdir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    import zarr

    em = em.compacted()
    g = zarr.open_group(str(tmp), mode="w")
    arrays = {"mask_data": em.data, "mask_offsets": em.offsets, **{n: getattr(em, n) for n in _ARRAYS}}
    for name, data in arrays.items():
        data = np.ascontiguousarray(data)
        chunks = tuple(max(1, s) for s in data.shape)  # one chunk per array: a slide is a handful of files
        arr = g.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks, compressors=_compressor(),
                             fill_value=0)
        if data.size:
            arr[...] = data
    g.attrs.update({
        "format": CACHE_FORMAT, "slide_id": slide_id, "encoding": em.encoding, "height": em.height,
        "width": em.width, "n_masks": em.n_masks, "crop_box_float": bool(em.crop_box_float),
        "geometry": geometry.to_dict(), "provenance": provenance, "cache_key": key,
        "patch_size": None if patch_size is None else float(patch_size), "dense_bytes": em.dense_bytes})
    g.attrs["complete"] = True  # last: an interrupted write is never mistaken for a result
    shutil.rmtree(gdir, ignore_errors=True)
    os.replace(tmp, gdir)
    return gdir


def read_cache_attrs(cache_dir: str | os.PathLike, slide_id: str) -> dict | None:
    """The slide's cache attrs, or None when absent / incomplete / unreadable."""
    zj = slide_cache_path(cache_dir, slide_id) / "zarr.json"
    try:
        attrs = json.loads(zj.read_text()).get("attributes", {})
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return attrs if attrs.get("complete") and attrs.get("format") == CACHE_FORMAT else None


def lookup(cache_dir: str | os.PathLike | None, slide_id: str, key: str) -> dict | None:
    """Attrs of a complete cache entry made with exactly ``key``, else None."""
    if cache_dir is None:
        return None
    attrs = read_cache_attrs(cache_dir, slide_id)
    return attrs if attrs is not None and attrs.get("cache_key") == key else None


def read_cache(cache_dir: str | os.PathLike, slide_id: str) -> tuple[EncodedMasks, SamGeometry, dict]:
    """Load a complete cache entry -> (masks, geometry, attrs).

    Raises:
        StoreError: missing, incomplete or corrupt entry.
    """
    gdir = slide_cache_path(cache_dir, slide_id)
    attrs = read_cache_attrs(cache_dir, slide_id)
    if attrs is None:
        raise StoreError("no complete SAM cache entry for this slide", slide=slide_id, path=gdir,
                         fix="run `clam2sam convert ... --sam-checkpoint PATH` to compute it")
    import zarr

    try:
        g = zarr.open_group(str(gdir), mode="r")
        a = {n: g[n][...] for n in ("mask_data", "mask_offsets") + _ARRAYS}
    except Exception as e:  # noqa: BLE001 - truncated chunks, missing arrays
        raise StoreError(f"SAM cache entry is unreadable ({type(e).__name__}: {e})", slide=slide_id, path=gdir,
                         fix="delete this folder; the next run recomputes it") from e
    em = EncodedMasks(int(attrs["height"]), int(attrs["width"]), attrs["encoding"], a["mask_data"], a["mask_offsets"],
                      a["areas"], a["bboxes"], a["predicted_iou"], a["stability_score"], a["point_coords"],
                      a["crop_boxes"], bool(attrs.get("crop_box_float")), attrs)
    if em.n_masks != int(attrs["n_masks"]):
        raise StoreError("SAM cache entry is inconsistent (mask count)", slide=slide_id, path=gdir,
                         fix="delete this folder; the next run recomputes it")
    return em, SamGeometry.from_dict(attrs["geometry"]), attrs


def list_cached(cache_dir: str | os.PathLike) -> list[str]:
    """Slide ids with a complete cache entry, sorted."""
    d = Path(cache_dir)
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.iterdir()):
        if p.is_dir() and not p.name.endswith(".tmp"):
            try:
                attrs = json.loads((p / "zarr.json").read_text()).get("attributes", {})
            except (FileNotFoundError, ValueError):
                continue
            if attrs.get("complete") and "slide_id" in attrs:
                out.append(str(attrs["slide_id"]))
    return out


def disk_bytes(path: str | os.PathLike) -> int:
    """Total size of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())

"""Read SAM-MIL ``segments/<id>.pkl`` files into a :class:`clam2sam.masks.MaskSet`.

A Segments pickle is one pickled list ``[image_info, mask_0, mask_1, ...]`` (SAM-MIL step 01):
``image_info`` holds the level-0 tissue bbox (``start_x``, ``start_y``, ``stop_x``, ``stop_y``, ``w``,
``h``), ``vis_level`` and ``downsample_ratio``; each mask record is a ``SamAutomaticMaskGenerator``
record with a dense bool ``segmentation`` (H, W), ``area``, ``bbox`` (XYWH), scores, ``crop_box``.

Loading goes through :func:`clam2sam.sources.safe_load.load_pickle` (allow-list, never plain ``pickle.load``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from clam2sam.errors import Clam2SamError, SegmentsError
from clam2sam.masks import MaskSet, SamGeometry
from clam2sam.sources.safe_load import load_pickle

LEVEL_DOWNSAMPLE_FLAG = "--level-downsample"
_INFO_KEYS = ("start_x", "start_y", "vis_level", "downsample_ratio")
_RECORD_EXTRA = ("predicted_iou", "stability_score", "point_coords", "crop_box")


def _plain(v):
    """numpy scalars / lists -> plain Python (for JSON provenance)."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def load_segments_pickle(path: str | Path, slide_id: str,
                         level_downsample: Callable[[int], float | None] | float | None = None
                         ) -> MaskSet:
    """Load and validate one Segments pickle.

    Args:
        path: ``segments/<slide_id>.pkl``.
        slide_id: for error messages.
        level_downsample: the OpenSlide downsample of the pickle's ``vis_level`` -- a number, or a callable
            ``vis_level -> float | None`` (from the slide or a flag). At ``vis_level`` 0 it is 1 by
            definition; when it is unknown for a higher level the pickle is refused.

    Returns:
        MaskSet with ``masks (M, H, W)`` bool, ``areas (M,)``, ``bboxes (M, 4)`` and the geometry.

    Raises:
        UnsafeInputError: the pickle references a global outside the allow-list (never executed).
        SegmentsError: the content is not a Segments list, masks disagree in shape, or the level
            downsample is unknown.
    """
    path = Path(path)
    obj = load_pickle(path, slide=slide_id)
    try:
        return _parse_segments(obj, path, slide_id, level_downsample)
    except Clam2SamError:
        raise
    except Exception as e:  # noqa: BLE001 - wrong types / shapes anywhere in an untrusted pickle
        raise SegmentsError(f"malformed Segments pickle ({type(e).__name__}: {str(e)[:200]})", slide=slide_id,
                            path=path, fix="regenerate it with SAM-MIL's 01_create_patches_and_sam_segment.py or "
                                           "drop --segments-dir") from e


def _parse_segments(obj, path: Path, slide_id: str, level_downsample) -> MaskSet:
    fix_regen = "regenerate it with SAM-MIL's 01_create_patches_and_sam_segment.py or drop --segments-dir"
    if not isinstance(obj, (list, tuple)) or not obj or not isinstance(obj[0], dict):
        raise SegmentsError("not a Segments pickle: expected a list [image_info, mask records...]",
                            slide=slide_id, path=path, fix=fix_regen)
    info = obj[0]
    missing = [k for k in _INFO_KEYS if k not in info]
    if missing:
        raise SegmentsError(f"image_info lacks {missing}", slide=slide_id, path=path, fix=fix_regen)
    vis_level = int(info["vis_level"])
    ratio = int(info["downsample_ratio"])
    if vis_level == 0:
        lds = 1.0
    else:
        lds = level_downsample(vis_level) if callable(level_downsample) else level_downsample
        if lds is None:
            raise SegmentsError(
                f"the masks were computed at vis_level {vis_level}, whose level downsample is unknown",
                slide=slide_id, path=path,
                fix=f"pass --slides-dir with the slide file, or {LEVEL_DOWNSAMPLE_FLAG} "
                    f"{slide_id}={vis_level}:FACTOR (e.g. {LEVEL_DOWNSAMPLE_FLAG} {vis_level}:2 for all slides)")
    D = int(float(lds)) * ratio
    if D < 1:
        raise SegmentsError(f"total downsample {D} < 1 (level downsample {lds}, ratio {ratio})",
                            slide=slide_id, path=path, fix=fix_regen)
    records = list(obj[1:])
    shapes = set()
    for i, r in enumerate(records):
        if not isinstance(r, dict) or "segmentation" not in r:
            raise SegmentsError(f"mask record {i} has no 'segmentation'", slide=slide_id, path=path, fix=fix_regen)
        seg = r["segmentation"]
        if not isinstance(seg, np.ndarray) or seg.ndim != 2:
            raise SegmentsError(f"mask {i}: 'segmentation' is not a 2-D array (RLE output is not supported)",
                                slide=slide_id, path=path, fix="run SAM with output_mode='binary_mask'")
        shapes.add(seg.shape)
    if len(shapes) > 1:
        raise SegmentsError(f"masks have different shapes {sorted(shapes)}", slide=slide_id, path=path,
                            fix=fix_regen)
    if records:
        H, W = shapes.pop()
        masks = np.stack([np.asarray(r["segmentation"], dtype=bool) for r in records])  # (M, H, W)
    else:
        H = W = 0
        masks = np.zeros((0, 0, 0), dtype=bool)
    areas = np.array([int(r.get("area", int(r["segmentation"].sum()))) for r in records], dtype=np.int64)
    bboxes = np.array([[int(round(float(x))) for x in r.get("bbox", (0, 0, W, H))] for r in records],
                      dtype=np.int64).reshape(-1, 4)
    if H == 0 and records:
        raise SegmentsError("masks are empty images", slide=slide_id, path=path, fix=fix_regen)
    check_bboxes(masks, bboxes, slide_id, path)
    geom = SamGeometry(start_x=int(info["start_x"]), start_y=int(info["start_y"]), total_downsample=D,
                       width=int(W), height=int(H), vis_level=vis_level, downsample_ratio=ratio,
                       level_downsample=float(lds),
                       stop_x=None if info.get("stop_x") is None else int(info["stop_x"]),
                       stop_y=None if info.get("stop_y") is None else int(info["stop_y"]))
    extra = [{k: _plain(r[k]) for k in _RECORD_EXTRA if k in r} for r in records]
    prov = {"source": "sammil-pickle", "path": str(path),
            "image_info": {str(k): _plain(v) for k, v in info.items()}}
    return MaskSet(masks=masks, areas=areas, bboxes=bboxes, geometry=geom, records=extra, provenance=prov)


BBOX_TOLERANCE = 1   # SAM pixels a recorded bbox may differ from its mask's pixels (SAM's are exact)


def check_bboxes(masks: np.ndarray, bboxes: np.ndarray, slide_id: str, path: str | Path | None) -> None:
    """Every mask's recorded XYWH bbox (``w = x_max - x_min``, as SAM writes it) must lie inside the mask image
    and contain the mask's pixels: the ``reference`` membership rule only looks at patches inside the bbox, so
    a wrong bbox would silently drop members (or the whole mask).

    Args:
        masks: ``(M, H, W)`` bool; bboxes: ``(M, 4)`` int64.

    Raises:
        SegmentsError: naming the slide, the pickle and the mask index (pickle element index + 1).
    """
    if masks.shape[0] == 0:
        return
    M, H, W = masks.shape
    x, y, w, h = (bboxes[:, k] for k in range(4))
    tol = BBOX_TOLERANCE
    outside = (x < -tol) | (y < -tol) | (w < 0) | (h < 0) | (x + w > W + tol) | (y + h > H + tol)
    cols, rows = masks.any(axis=1), masks.any(axis=2)          # (M, W), (M, H)
    has = cols.any(axis=1)                                      # (M,) masks with pixels
    x0 = np.where(has, cols.argmax(axis=1), 0)
    x1 = np.where(has, W - 1 - cols[:, ::-1].argmax(axis=1), 0)
    y0 = np.where(has, rows.argmax(axis=1), 0)
    y1 = np.where(has, H - 1 - rows[:, ::-1].argmax(axis=1), 0)
    misses = has & ((x0 < x - tol) | (y0 < y - tol) | (x1 > x + w + tol) | (y1 > y + h + tol))
    bad = np.flatnonzero(outside | misses)
    if bad.size == 0:
        return
    i = int(bad[0])
    box = [int(v) for v in bboxes[i]]
    where = (f"lies outside the mask image ({W}x{H} SAM px)" if outside[i] else
             f"does not contain the mask's pixels (x {int(x0[i])}..{int(x1[i])}, y {int(y0[i])}..{int(y1[i])})")
    raise SegmentsError(f"{bad.size} of {M} masks have a bad bbox: mask {i} (pickle element {i + 1}) has bbox "
                        f"{box} (XYWH) that {where}", slide=slide_id, path=path,
                        fix="the pickle is damaged or was edited: regenerate it with SAM-MIL's "
                            "01_create_patches_and_sam_segment.py (or fix the 'bbox' of those masks)")


def check_geometry(maskset: MaskSet, coords: np.ndarray, patch_size_level0: float, slide_id: str,
                   path: str | Path | None = None, slide_dims: tuple[int, int] | None = None) -> None:
    """Refuse a MaskSet whose SAM image does not cover the slide's patches.

    Every patch top-left, mapped to SAM pixels, must lie within one patch footprint of the SAM image;
    when the slide's level-0 dimensions are known the recorded bbox must lie inside the slide.

    Raises:
        SegmentsError: naming the slide, the pickle and the likely cause.
    """
    g = maskset.geometry
    fix = ("the pickle belongs to another slide or the level downsample is wrong: check the file name, "
           "--slides-dir and --level-downsample")
    if slide_dims is not None:
        W0, H0 = slide_dims
        ext_x = g.stop_x if g.stop_x is not None else g.start_x + g.width * g.total_downsample
        ext_y = g.stop_y if g.stop_y is not None else g.start_y + g.height * g.total_downsample
        if g.start_x < 0 or g.start_y < 0 or g.start_x >= W0 or g.start_y >= H0 or ext_x > W0 or ext_y > H0:
            raise SegmentsError(f"segment bbox x {g.start_x}..{ext_x}, y {g.start_y}..{ext_y} lies outside the "
                                f"slide ({W0}x{H0} level-0 px)", slide=slide_id, path=path, fix=fix)
    if maskset.n_masks == 0 or len(coords) == 0:
        return
    D = g.total_downsample
    margin = max(float(patch_size_level0 or 0) / D, 1.0)
    u = (coords[:, 0] - g.start_x) / D
    v = (coords[:, 1] - g.start_y) / D
    bad = (u < -margin) | (v < -margin) | (u >= g.width + margin) | (v >= g.height + margin)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SegmentsError(
            f"{int(bad.sum())} of {len(coords)} patches lie outside the SAM image (e.g. patch {i} at level-0 "
            f"({int(coords[i, 0])}, {int(coords[i, 1])}); the masks cover x {g.start_x}.."
            f"{g.start_x + g.width * D}, y {g.start_y}..{g.start_y + g.height * D} with downsample {D})",
            slide=slide_id, path=path, fix=fix)

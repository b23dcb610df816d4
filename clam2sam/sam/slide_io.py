"""Read the SAM input image of a slide exactly as SAM-MIL does, and record its geometry.

Rule (SAM-MIL ``WholeSlideImage_modified.process_contours`` + ``visWSI``; re-implemented here):

1. Tissue box ``(start_x, start_y) .. (stop_x, stop_y)`` in level-0 pixels: over all CLAM tissue contour
   points when contours are given (``stop`` = the largest contour point, as SAM-MIL), otherwise the extent
   of the patches (``stop`` = largest top-left + patch size), clipped to the slide. ``w = stop - start``.
2. ``D`` = the smallest power of two with ``w / D <= 1024`` and ``h / D <= 1024``.
3. Level = the last pyramid level before the first one whose ``int(downsample)`` exceeds ``D`` on both
   axes (CLAM's per-axis downsamples ``level_dim[0] / level_dim[i]``); ``downsample_ratio = D // int(ds)``.
4. Read ``int(stop / int(ds)) - int(start / int(ds))`` pixels per axis at that level from level-0
   ``start``, convert to RGB, and PIL-resize (bicubic, Pillow's default) to ``int(size / ratio)``.

SAM pixel ``(u, v)`` then covers level-0 ``start + (u, v) * int(ds) * ratio`` (:class:`SamGeometry`).
Regions larger than ``max_read_pixels`` are read in row strips whose resized bands equal the one-shot
resize, so slides without a pyramid do not need the whole region in memory.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clam2sam.errors import SamError
from clam2sam.ids import SLIDE_EXTENSIONS, normalise_slide_id
from clam2sam.masks import SamGeometry

SAM_LONG_SIDE = 1024
MAX_READ_PIXELS = 1 << 26          # ~64 M px (256 MiB RGBA) per read_region call
RESAMPLE = "bicubic"               # Pillow's default for Image.resize on RGB, as SAM-MIL calls it


@dataclass(frozen=True)
class TissueBox:
    """Level-0 tissue bounding box; ``w = stop_x - start_x`` (SAM-MIL's convention)."""

    start_x: int
    start_y: int
    stop_x: int
    stop_y: int
    source: str  # "contours" | "coords"

    @property
    def w(self) -> int:
        return self.stop_x - self.start_x

    @property
    def h(self) -> int:
        return self.stop_y - self.start_y


# ------------------------------------------------------------------------------------ finding slides

_INDEX: dict[str, dict[str, list[Path]]] = {}


def _slide_index(slides_dir: Path) -> dict[str, list[Path]]:
    key = str(slides_dir.resolve())
    if key not in _INDEX:
        idx: dict[str, list[Path]] = {}
        for entry in sorted(os.scandir(slides_dir), key=lambda e: e.name):
            if not entry.is_file() or not entry.name.lower().endswith(SLIDE_EXTENSIONS):
                continue
            idx.setdefault(normalise_slide_id(entry.name), []).append(Path(entry.path))
        _INDEX[key] = idx
    return _INDEX[key]


def find_slide(slides_dir: str | os.PathLike, slide_id: str) -> Path:
    """The slide file in ``slides_dir`` whose normalised id is ``slide_id`` (any slide extension).

    Raises:
        SamError: no such file, or several files (e.g. ``a.svs`` and ``a.tif``) share the id.
    """
    d = Path(slides_dir)
    if not d.is_dir():
        raise SamError("slides directory not found", path=d, fix="pass the folder holding the slides to --slides-dir")
    hits = _slide_index(d).get(slide_id, [])
    if not hits:
        raise SamError("no slide file for this feature file in --slides-dir", slide=slide_id, path=d,
                       fix=f"put {slide_id}.<svs|tif|ndpi|...> there, or drop the slide with --skip-errors")
    if len(hits) > 1:
        raise SamError(f"several slide files share this id: {', '.join(p.name for p in hits)}", slide=slide_id,
                       path=d, fix="keep one file per slide id in --slides-dir")
    return hits[0]


def clear_slide_index() -> None:
    _INDEX.clear()


def open_slide(path: str | os.PathLike, slide_id: str | None = None):
    """Open a slide with OpenSlide; unreadable files become a SamError naming slide and file."""
    import openslide

    path = Path(path)
    if not path.is_file():
        raise SamError("slide file not found", slide=slide_id, path=path, fix="check --slides-dir")
    try:
        return openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, OSError, ValueError) as e:
        raise SamError(f"OpenSlide cannot read this slide ({type(e).__name__}: {e})", slide=slide_id, path=path,
                       fix="check that the file is a complete whole-slide image in a format OpenSlide reads "
                           "(svs, tif, ndpi, mrxs, ...)") from e


# --------------------------------------------------------------------------------------- tissue box

def check_coords_fit(coords: np.ndarray, dims: tuple[int, int], *, slide_id: str | None = None,
                     path: object = None) -> None:
    """Patch top-left corners must lie inside the level-0 slide; otherwise slide and features contradict."""
    coords = np.asarray(coords).reshape(-1, 2)
    if coords.size == 0:
        raise SamError("no patch coordinates: cannot place a tissue region", slide=slide_id, path=path,
                       fix="the bag is empty; drop the slide")
    lo, hi = coords.min(0), coords.max(0)
    W, H = int(dims[0]), int(dims[1])
    if lo[0] < 0 or lo[1] < 0 or hi[0] >= W or hi[1] >= H:
        raise SamError(f"patch coordinates span x {lo[0]}..{hi[0]}, y {lo[1]}..{hi[1]} but the slide is "
                       f"{W}x{H} px at level 0: the slide does not match these features", slide=slide_id,
                       path=path, fix="check that --slides-dir holds the slides the features were extracted "
                                      "from, and that coords are level-0 (legacy CLAM coords need conversion)")


def tissue_box_from_coords(coords: np.ndarray, patch_size_level0: int, dims: tuple[int, int]) -> TissueBox:
    """Extent of all patches (top-left min .. top-left max + patch size), clipped to the slide."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    lo = coords.min(0)
    hi = coords.max(0) + int(patch_size_level0)
    return TissueBox(int(max(lo[0], 0)), int(max(lo[1], 0)), int(min(hi[0], dims[0])), int(min(hi[1], dims[1])),
                     "coords")


def tissue_box_from_contours(contours: list, dims: tuple[int, int]) -> TissueBox:
    """SAM-MIL's box over all tissue contour points (CLAM's ``(K, 1, 2)`` int32 level-0 contours)."""
    pts = np.concatenate([np.asarray(c).reshape(-1, 2) for c in contours], 0).astype(np.int64)
    lo, hi = pts.min(0), pts.max(0)
    return TissueBox(int(max(lo[0], 0)), int(max(lo[1], 0)), int(min(hi[0], dims[0])), int(min(hi[1], dims[1])),
                     "contours")


def load_clam_contours(path: str | os.PathLike, slide_id: str | None = None) -> list[np.ndarray]:
    """Tissue contours from a CLAM segmentation pickle (``{'tissue': [...], 'holes': [...]}``)."""
    from clam2sam.sources.safe_load import load_pickle

    obj = load_pickle(path, slide=slide_id)
    tissue = obj.get("tissue") if isinstance(obj, dict) else None
    if not isinstance(tissue, list) or not tissue:
        raise SamError("not a CLAM segmentation pickle (expected a dict with a non-empty 'tissue' list)",
                       slide=slide_id, path=path, fix="pass the <slide>_mask.pkl written by CLAM, or omit it")
    return [np.asarray(c) for c in tissue]


# ------------------------------------------------------------------------------------------ geometry

def sam_mil_downsample(w: int, h: int, long_side: int = SAM_LONG_SIDE) -> int:
    """Smallest power of two ``D`` with ``w / D <= long_side`` and ``h / D <= long_side``."""
    rw = math.log(w / long_side, 2) if w > long_side else 0
    rh = math.log(h / long_side, 2) if h > long_side else 0
    return int(2 ** math.ceil(max(rw, rh)))


def clam_level_downsamples(level_dimensions) -> list[tuple[float, float]]:
    """CLAM's per-axis downsamples: ``level_dim[0] / level_dim[i]`` for x and y."""
    W0, H0 = level_dimensions[0]
    return [(W0 / float(w), H0 / float(h)) for w, h in level_dimensions]


def choose_level(level_downsamples: list[tuple[float, float]], D: int) -> int:
    """Last level before the first whose ``int`` downsample exceeds ``D`` on both axes (else the last)."""
    for i, (dx, dy) in enumerate(level_downsamples):
        if int(dx) > D and int(dy) > D:
            return max(i - 1, 0)
    return len(level_downsamples) - 1


def plan_geometry(box: TissueBox, level_dimensions) -> SamGeometry:
    """The SAM-MIL level, integer resize and resulting SAM image size for a tissue box."""
    if box.w <= 0 or box.h <= 0:
        raise SamError(f"empty tissue region ({box.w}x{box.h} px)", fix="check the coordinates / contours")
    lds = clam_level_downsamples(level_dimensions)
    D = sam_mil_downsample(box.w, box.h)
    level = choose_level(lds, D)
    ids_x, ids_y = int(lds[level][0]), int(lds[level][1])
    ratio = max(int(D / ids_x), 1)
    read_w = int(box.stop_x * (1 / ids_x)) - int(box.start_x * (1 / ids_x))
    read_h = int(box.stop_y * (1 / ids_y)) - int(box.start_y * (1 / ids_y))
    width, height = (int(read_w / ratio), int(read_h / ratio)) if ratio > 1 else (read_w, read_h)
    return SamGeometry(start_x=box.start_x, start_y=box.start_y, total_downsample=ids_x * ratio, width=width,
                       height=height, vis_level=level, downsample_ratio=ratio, level_downsample=float(lds[level][0]),
                       stop_x=box.stop_x, stop_y=box.stop_y)


def read_size(geom: SamGeometry) -> tuple[int, int]:
    """Pixels read at ``vis_level`` before the integer resize."""
    ids = int(geom.total_downsample // geom.downsample_ratio)
    return (int(geom.stop_x * (1 / ids)) - int(geom.start_x * (1 / ids)),
            int(geom.stop_y * (1 / ids)) - int(geom.start_y * (1 / ids)))


# ------------------------------------------------------------------------------------------- reading

def read_sam_image(slide, geom: SamGeometry, *, max_read_pixels: int = MAX_READ_PIXELS) -> np.ndarray:
    """Read and resize the SAM input image. Returns ``(height, width, 3)`` uint8 RGB."""
    from PIL import Image

    rw, rh = read_size(geom)
    ratio = geom.downsample_ratio
    origin = (int(geom.start_x), int(geom.start_y))
    if rw * rh <= max_read_pixels:
        img = slide.read_region(origin, geom.vis_level, (rw, rh)).convert("RGB")
        if ratio > 1:
            img = img.resize((geom.width, geom.height), Image.Resampling.BICUBIC)
        out = np.asarray(img)
    elif ratio == 1:  # no resize: plain row strips
        out = np.empty((rh, rw, 3), np.uint8)
        ids = geom.total_downsample
        step = max(1, max_read_pixels // max(rw, 1))
        for r0 in range(0, rh, step):
            r1 = min(r0 + step, rh)
            loc = (origin[0], origin[1] + r0 * ids)
            out[r0:r1] = np.asarray(slide.read_region(loc, geom.vis_level, (rw, r1 - r0)).convert("RGB"))
    else:
        out = _read_in_strips(slide, geom, rw, rh, max_read_pixels)
    if out.shape[:2] != (geom.height, geom.width):  # pragma: no cover - guarded by plan_geometry
        raise SamError(f"SAM image is {out.shape[1]}x{out.shape[0]}, expected {geom.width}x{geom.height}")
    return np.ascontiguousarray(out)


def _read_in_strips(slide, geom: SamGeometry, rw: int, rh: int, max_read_pixels: int) -> np.ndarray:
    """Bands of output rows, each resized from a source strip with enough margin for the bicubic filter."""
    from PIL import Image

    ids = geom.total_downsample // geom.downsample_ratio
    scale = rh / geom.height                       # source rows per output row (PIL's vertical scale)
    support = 2.0 * max(scale, 1.0) + 2            # bicubic support (2) times the scale, plus rounding slack
    band = max(1, int(max_read_pixels // max(rw, 1) / scale) - int(2 * support))
    out = np.empty((geom.height, geom.width, 3), np.uint8)
    for o0 in range(0, geom.height, band):
        o1 = min(o0 + band, geom.height)
        s0 = max(int(math.floor(o0 * scale - support)), 0)
        s1 = min(int(math.ceil(o1 * scale + support)), rh)
        loc = (int(geom.start_x), int(geom.start_y + s0 * ids))
        strip = slide.read_region(loc, geom.vis_level, (rw, s1 - s0)).convert("RGB")
        box = (0.0, o0 * scale - s0, float(rw), o1 * scale - s0)
        out[o0:o1] = np.asarray(strip.resize((geom.width, o1 - o0), Image.Resampling.BICUBIC, box=box))
    return out


def slide_mpp(slide) -> float | None:
    v = slide.properties.get("openslide.mpp-x")
    try:
        return float(v) if v else None
    except ValueError:
        return None

"""PNG pictures of a store (``clam2sam inspect --plot DIR``): segment maps per slide, cohort histograms.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), so it is
safe in headless runs and inside other programs.

Per-slide picture: the patch grid drawn at its level-0 coordinates, each patch filled with its
segment's colour (unassigned patches grey), optionally over the slide thumbnail. The axes occupy a
known pixel box (:attr:`SlidePicture.axes_box`) whose data limits are :attr:`SlidePicture.view`, so a
caller (and the tests) can tell which PNG pixel shows a given level-0 point.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from clam2sam.ids import normalise_slide_id, slide_key
from clam2sam.store.writer import StoreReader

DPI = 100
UNASSIGNED = (0.62, 0.62, 0.62)   # grey for patches in no segment
AXES_PX = 1000                    # target width (or height for tall slides) of the map, in pixels
MAX_AXES_H = 1100
MARGIN = {"left": 90, "right": 340, "top": 60, "bottom": 60}
LEGEND_SEGMENTS = 15              # largest segments named in the legend


def _palette() -> np.ndarray:
    t20 = list(colormaps["tab20"].colors)
    cols = t20[0::2] + t20[1::2] + list(colormaps["tab20b"].colors)  # strong colours first
    keep = [c for c in cols if max(c) - min(c) > 0.08]  # drop greys: grey means "unassigned"
    return np.asarray(keep, dtype=np.float64)


PALETTE = _palette()  # (K, 3) RGB in 0..1


def segment_color(k: int) -> tuple[float, float, float]:
    """RGB (0..1) of segment ``k`` (cycled palette; ``-1`` -> grey)."""
    if k < 0:
        return UNASSIGNED
    return tuple(float(x) for x in PALETTE[k % len(PALETTE)])


@dataclass
class SlidePicture:
    """Where a per-slide PNG went and how level-0 points map onto its pixels.

    Attributes:
        path: the PNG.
        width, height: PNG size in pixels.
        axes_box: ``(left, top, width, height)`` of the map in PNG pixels (origin top-left).
        view: ``(x0, x1, y0, y1)`` level-0 limits shown by the axes (y grows downwards).
    """

    path: Path
    width: int
    height: int
    axes_box: tuple[int, int, int, int]
    view: tuple[float, float, float, float]

    def pixel_of(self, x: float, y: float) -> tuple[int, int]:
        """PNG ``(column, row)`` of level-0 point ``(x, y)``."""
        left, top, w, h = self.axes_box
        x0, x1, y0, y1 = self.view
        return (int(left + (x - x0) / (x1 - x0) * w), int(top + (y - y0) / (y1 - y0) * h))


@dataclass
class PlotResult:
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def render_segment_raster(coords: np.ndarray, segment_ids: np.ndarray, patch_size: float, *,
                          max_px: int = 1600) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Paint each patch with its segment colour into an RGBA raster (transparent background).

    Args:
        coords: ``(N, 2)`` level-0 top-left (x, y).
        segment_ids: ``(N,)`` segment per patch, -1 = none.
        patch_size: patch side in level-0 pixels.
        max_px: longest raster side.

    Returns:
        ``(H, W, 4)`` uint8 RGBA and its level-0 extent ``(x0, x1, y0, y1)``.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    x0, y0 = coords.min(0)
    x1, y1 = coords.max(0) + patch_size
    scale = max(1.0, max(x1 - x0, y1 - y0) / max_px)  # level-0 px per raster px
    W, H = int(math.ceil((x1 - x0) / scale)), int(math.ceil((y1 - y0) / scale))
    img = np.zeros((H, W, 4), np.uint8)
    c0 = np.floor((coords[:, 0] - x0) / scale).astype(int)
    r0 = np.floor((coords[:, 1] - y0) / scale).astype(int)
    c1 = np.maximum(c0 + 1, np.ceil((coords[:, 0] + patch_size - x0) / scale).astype(int))
    r1 = np.maximum(r0 + 1, np.ceil((coords[:, 1] + patch_size - y0) / scale).astype(int))
    rgba = np.concatenate([PALETTE[np.maximum(segment_ids, 0) % len(PALETTE)], np.ones((len(coords), 1))], 1)
    rgba[segment_ids < 0, :3] = UNASSIGNED
    rgba = np.round(rgba * 255).astype(np.uint8)
    for i in np.argsort(segment_ids >= 0, kind="stable"):  # unassigned first, segments on top
        img[r0[i]:r1[i], c0[i]:c1[i]] = rgba[i]
    return img, (float(x0), float(x0 + W * scale), float(y0), float(y0 + H * scale))


def _layout(view: tuple[float, float, float, float], legend_rows: int) -> tuple[int, int, int, int]:
    """Figure width/height and axes width/height in pixels for a view, keeping the data aspect."""
    x0, x1, y0, y1 = view
    r = (y1 - y0) / max(x1 - x0, 1e-9)
    ax_w, ax_h = AXES_PX, AXES_PX * r
    if ax_h > MAX_AXES_H:
        ax_h, ax_w = MAX_AXES_H, MAX_AXES_H / r
    ax_w, ax_h = max(int(round(ax_w)), 200), max(int(round(ax_h)), 120)
    fig_w = MARGIN["left"] + ax_w + MARGIN["right"]
    fig_h = max(MARGIN["top"] + ax_h + MARGIN["bottom"], 120 + 26 * legend_rows)
    return fig_w, fig_h, ax_w, ax_h


def plot_slide(path: str | os.PathLike, slide_id: str, coords: np.ndarray, segment_ids: np.ndarray,
               patch_size: float, *, segment_sizes: np.ndarray | None = None,
               thumbnail: tuple[np.ndarray, tuple[int, int]] | None = None) -> SlidePicture:
    """Write the segment map of one slide.

    Args:
        path: output PNG.
        coords, segment_ids, patch_size: as in :func:`render_segment_raster`.
        segment_sizes: ``(S,)`` member counts (legend order); default: counts of ``segment_ids``.
        thumbnail: ``(rgb (h, w, 3) uint8, (W0, H0) level-0 size)`` drawn underneath.
    """
    segment_ids = np.asarray(segment_ids)
    N = len(segment_ids)
    if segment_sizes is None:
        S = int(segment_ids.max()) + 1 if N and segment_ids.max() >= 0 else 0
        segment_sizes = np.bincount(segment_ids[segment_ids >= 0], minlength=S)
    S = len(segment_sizes)
    img, ext = render_segment_raster(coords, segment_ids, patch_size)
    view = ext
    if thumbnail is not None:
        W0, H0 = thumbnail[1]
        view = (min(0.0, ext[0]), max(float(W0), ext[1]), min(0.0, ext[2]), max(float(H0), ext[3]))
        img[..., 3] //= 2  # see the tissue through the segments
    top = np.argsort(-np.asarray(segment_sizes), kind="stable")[:LEGEND_SEGMENTS]
    legend_rows = len(top) + 3
    fig_w, fig_h, ax_w, ax_h = _layout(view, legend_rows)
    fig = Figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    left, bottom = MARGIN["left"], fig_h - MARGIN["top"] - ax_h
    ax = fig.add_axes((left / fig_w, bottom / fig_h, ax_w / fig_w, ax_h / fig_h))
    if thumbnail is not None:
        W0, H0 = thumbnail[1]
        ax.imshow(thumbnail[0], extent=(0, W0, H0, 0), interpolation="bilinear", aspect="auto")
    ax.imshow(img, extent=(ext[0], ext[1], ext[3], ext[2]), interpolation="nearest", aspect="auto")
    ax.set_xlim(view[0], view[1])
    ax.set_ylim(view[3], view[2])
    ax.set_facecolor("white")
    ax.set_xlabel("x (level-0 pixels)")
    ax.set_ylabel("y (level-0 pixels)")
    n_un = int((segment_ids < 0).sum())
    cov = 1 - n_un / N if N else 0.0
    ax.set_title(f"{slide_id}: {N} patches, {S} segments, {cov:.0%} of patches in a segment", fontsize=13)
    handles = [Patch(facecolor=segment_color(int(k)), edgecolor="none",
                     label=f"segment {k}: {_patches(int(segment_sizes[k]))}") for k in top]
    if S > len(top):
        handles.append(Patch(facecolor="white", edgecolor="black",
                             label=f"+{S - len(top)} smaller segments"))
    handles.append(Patch(facecolor=UNASSIGNED, edgecolor="none", label=f"unassigned: {_patches(n_un)}"))
    fig.legend(handles=handles, loc="upper left", fontsize=10, frameon=False, title="largest segments",
               bbox_to_anchor=((left + ax_w + 20) / fig_w, 1 - MARGIN["top"] / fig_h))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    fig.clear()  # free the renderer now, not at the next garbage collection
    return SlidePicture(path, fig_w, fig_h, (left, MARGIN["top"], ax_w, ax_h), view)


def _hist(ax, values, title, xlabel, *, log=False, bins=30, range_=None, integer=False) -> None:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if log:
        v = v[v > 0]
    if v.size == 0:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, fontsize=12)
    else:
        log = log and v.max() > 20 * v.min()  # log axis only for a wide range
        if log:
            bins = np.geomspace(v.min(), v.max(), bins + 1)
            ax.set_xscale("log")
        elif integer and v.max() - v.min() < bins:
            bins = np.arange(v.min() - 0.5, v.max() + 1.5)
        ax.hist(v, bins=bins, range=None if log else range_, color="#3b75af", edgecolor="white")
        med = float(np.median(v))
        ax.axvline(med, color="#d62728", lw=1.5, label=f"median {med:.3g}")
        ax.legend(fontsize=10)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=12)
    ax.set_xlabel(xlabel + (" (log scale)" if log else ""))
    ax.set_ylabel("count")


def plot_cohort(path: str | os.PathLike, *, sizes, areas_px, areas_um2, coverage, segments_per_slide,
                title: str = "") -> Path:
    """2x2 histograms: segment sizes, segment areas (um^2 when known), coverage and segments per slide."""
    fig = Figure(figsize=(14, 10), dpi=DPI)
    FigureCanvasAgg(fig)
    axs = fig.subplots(2, 2)
    _hist(axs[0, 0], sizes, "segment size", "patches per segment", log=True, integer=True)
    um2 = np.asarray(areas_um2, dtype=np.float64)
    if np.isfinite(um2).any():
        _hist(axs[0, 1], um2, "segment area", "area (um^2)", log=True)
    else:
        _hist(axs[0, 1], areas_px, "segment area", "area (level-0 pixels^2)", log=True)
    _hist(axs[1, 0], coverage, "coverage per slide", "share of patches in a segment", bins=20, range_=(0, 1))
    _hist(axs[1, 1], segments_per_slide, "segments per slide", "segments", bins=20, integer=True)
    fig.suptitle(title, fontsize=15)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    fig.clear()
    return path


# ------------------------------------------------------------------------------------------ thumbnails

def find_slide_files(slides_dir: str | os.PathLike) -> dict[str, Path]:
    """Map normalised slide id -> slide file under ``slides_dir`` (recursive; any extension)."""
    out: dict[str, Path] = {}
    for p in sorted(Path(slides_dir).rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            try:
                out.setdefault(normalise_slide_id(p.name), p)
            except Exception:  # noqa: BLE001 - odd names are simply not slides
                continue
    return out


def read_thumbnail(path: str | os.PathLike, max_px: int = 2048) -> tuple[np.ndarray, tuple[int, int]]:
    """``(rgb (h, w, 3) uint8, (W0, H0))`` of a slide via OpenSlide (plain images via its PIL fallback)."""
    import openslide

    with openslide.open_slide(str(path)) as s:
        dims = tuple(int(v) for v in s.dimensions)
        thumb = s.get_thumbnail((max_px, max_px)).convert("RGB")
    return np.asarray(thumb), dims


def plot_store(reader: StoreReader, out_dir: str | os.PathLike, *, slide_ids: list[str] | None = None,
               slides_dir: str | os.PathLike | None = None, max_slides: int | None = 20,
               on_slide: Callable[[str], None] | None = None) -> PlotResult:
    """Per-slide segment maps (up to ``max_slides``) and ``cohort_histograms.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    res = PlotResult()
    ids = reader.slide_ids() if slide_ids is None else list(slide_ids)
    slide_files = find_slide_files(slides_dir) if slides_dir else {}
    sizes, areas, um2, cov, nseg = [], [], [], [], []
    for i, sid in enumerate(ids):
        try:
            seg = reader.read_array(sid, "segment_ids")
            ss = reader.read_array(sid, "segment_sizes")
            sizes.append(ss)
            areas.append(reader.read_array(sid, "segment_areas"))
            um2.append(reader.read_array(sid, "segment_areas_um2"))
            idx = reader.read_array(sid, "member_indices")
            cov.append(len(np.unique(idx)) / len(seg) if len(seg) else np.nan)
            nseg.append(len(ss))
            if max_slides is None or i < max_slides:
                res.files.append(_plot_one(reader, sid, seg, ss, out_dir, slide_files, slides_dir, res.notes))
        except Exception as e:  # noqa: BLE001 - one bad slide must not stop the pictures of the others
            res.notes.append(f"slide {sid!r}: no picture ({e})")
        if on_slide:
            on_slide(sid)
    if max_slides is not None and len(ids) > max_slides:
        res.notes.append(f"drew {max_slides} of {len(ids)} slides (raise --max-slides for more)")
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0))
    res.files.append(plot_cohort(out_dir / "cohort_histograms.png", sizes=cat(sizes), areas_px=cat(areas),
                                 areas_um2=cat(um2), coverage=cov, segments_per_slide=nseg,
                                 title=f"{reader.path.name}: {len(ids)} slides, {int(sum(nseg))} segments"))
    return res


def _plot_one(reader, sid, seg, sizes, out_dir, slide_files, slides_dir, notes) -> Path:
    coords = reader.read_array(sid, "coords")
    attrs = reader.slide_attrs(sid)
    ps = attrs.get("patch_size_level0")
    if not ps:  # fall back to the grid step
        xs = np.unique(coords[:, 0])
        ps = float(np.diff(xs).min()) if len(xs) > 1 else 256.0
        notes.append(f"slide {sid!r}: no patch_size_level0 attr; drew patches {ps:g} px wide")
    thumb = None
    if slides_dir:
        f = slide_files.get(sid)
        if f is None:
            notes.append(f"slide {sid!r}: no slide file in {slides_dir}; drawn without thumbnail")
        else:
            try:
                thumb = read_thumbnail(f)
            except Exception as e:  # noqa: BLE001
                notes.append(f"slide {sid!r}: cannot read {f} ({type(e).__name__}: {e}); no thumbnail")
    if len(coords) == 0:
        raise ValueError("no patches")
    pic = plot_slide(out_dir / f"slide_{slide_key(sid)}.png", sid, coords, seg, float(ps),
                     segment_sizes=sizes, thumbnail=thumb)
    return pic.path


def _patches(n: int) -> str:
    return f"{n} patch" if n == 1 else f"{n} patches"

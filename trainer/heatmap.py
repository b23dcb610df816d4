"""Per-slide heatmaps: every patch drawn at its level-0 position, coloured by attention or probability.

The figure is composed pixel by pixel (PIL), so its geometry is exact and recorded::

    +-----------------------------------------------+
    | title (slide, model, probability, label)       |  TITLE_H px
    |  +---------- canvas ----------+   +--+ max    |
    |  | patches / thumbnail        |   |  |        |  colour bar (height of the canvas)
    |  | segment outlines           |   |  | min    |
    |  +----------------------------+   +--+        |
    +-----------------------------------------------+

A level-0 point (x, y) lies at image pixel ``(MARGIN + (x - ox) * scale, TITLE_H + (y - oy) * scale)``
(:meth:`Geometry.to_pixel`), with ``(ox, oy)`` the origin (0, 0 with a slide file, else the patches'
bounding box) and ``scale`` such that the canvas' long side is ``max_size`` px. ``OUT/heatmaps.json``
keeps origin and scale of every slide.

Colour scale (``norm``): ``percentile`` (rank of each patch within the slide, as CLAM's heatmaps; the
default for attention, whose raw values depend on the bag size), ``minmax`` (raw values stretched to the
slide's range) or ``none`` (values taken as they are in [0, 1]; the default for probabilities).
Segment outlines: a pixel is drawn where two neighbouring canvas pixels belong to different segments (a
segment's edge against another segment, an unassigned patch or background), 2 px wide when patches are >= 12 px.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clam2sam.errors import UsageError
from clam2sam.ids import normalise_slide_id, slide_key

MARGIN, TITLE_H, GAP, BAR_W, LABEL_W = 10, 30, 16, 18, 70
NORMS = ("percentile", "minmax", "none")
VALUES = ("attention", "probability")


@dataclass
class Geometry:
    """Where level-0 coordinates land in the PNG."""

    origin: tuple[float, float]       # level-0 (ox, oy) at the canvas' top-left corner
    scale: float                      # canvas pixels per level-0 pixel
    canvas: tuple[int, int]           # (width, height) of the canvas in pixels
    offset: tuple[int, int] = (MARGIN, TITLE_H)   # canvas top-left in the PNG

    def to_pixel(self, x: float, y: float) -> tuple[int, int]:
        """PNG ``(column, row)`` of the level-0 point ``(x, y)``."""
        return (self.offset[0] + int(math.floor((x - self.origin[0]) * self.scale)),
                self.offset[1] + int(math.floor((y - self.origin[1]) * self.scale)))


def normalise_values(v: np.ndarray, norm: str) -> np.ndarray:
    """Map scores to [0, 1] for the colour map (see module doc)."""
    v = np.asarray(v, dtype=np.float64)
    if norm == "percentile":
        if v.size < 2:
            return np.ones_like(v)
        order = np.argsort(v, kind="stable")
        r = np.empty(v.size)
        r[order] = np.arange(v.size)
        uniq, inv = np.unique(v, return_inverse=True)         # ties share their mean rank
        r = (np.bincount(inv, weights=r) / np.bincount(inv))[inv]
        return r / (v.size - 1)
    if norm == "minmax":
        lo, hi = float(v.min()), float(v.max())
        return np.zeros_like(v) if hi <= lo else (v - lo) / (hi - lo)
    return np.clip(v, 0.0, 1.0)


def _patch_boxes(coords: np.ndarray, patch_size: float, g: Geometry) -> np.ndarray:
    """``(N, 4)`` canvas pixel boxes ``x0, y0, x1, y1`` (exclusive ends, at least 1 px)."""
    ox, oy = g.origin
    x0 = np.floor((coords[:, 0] - ox) * g.scale).astype(np.int64)
    y0 = np.floor((coords[:, 1] - oy) * g.scale).astype(np.int64)
    x1 = np.maximum(x0 + 1, np.floor((coords[:, 0] + patch_size - ox) * g.scale).astype(np.int64))
    y1 = np.maximum(y0 + 1, np.floor((coords[:, 1] + patch_size - oy) * g.scale).astype(np.int64))
    W, H = g.canvas
    return np.stack([x0.clip(0, W), y0.clip(0, H), x1.clip(0, W), y1.clip(0, H)], 1)


def _paint(boxes: np.ndarray, values: np.ndarray, shape: tuple[int, int], fill) -> np.ndarray:
    img = np.full(shape, fill, dtype=np.asarray(values).dtype)
    for (x0, y0, x1, y1), v in zip(boxes, values):
        img[y0:y1, x0:x1] = v
    return img


def outline_mask(labels: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: pixels on a boundary of a segment (label >= 0) with anything else."""
    m = np.zeros(labels.shape, bool)
    dx = labels[:, 1:] != labels[:, :-1]
    dx &= np.maximum(labels[:, 1:], labels[:, :-1]) >= 0
    m[:, 1:] |= dx
    dy = labels[1:, :] != labels[:-1, :]
    dy &= np.maximum(labels[1:, :], labels[:-1, :]) >= 0
    m[1:, :] |= dy
    return m


def render_heatmap(coords: np.ndarray, values: np.ndarray, patch_size: float, *, segment_ids=None,
                   thumbnail: Image.Image | None = None, slide_dims: tuple[int, int] | None = None,
                   title: str = "", cmap: str = "jet", alpha: float = 0.6, max_size: int = 1024,
                   norm: str = "percentile", bar_label: str = "", outline_rgb=(0, 0, 0)) -> tuple[Image.Image, Geometry]:
    """Compose one heatmap PNG (see module doc). ``coords`` ``(N, 2)`` level-0 top-left, ``values`` ``(N,)``."""
    import matplotlib

    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if slide_dims is not None:
        origin, extent = (0.0, 0.0), (float(slide_dims[0]), float(slide_dims[1]))
    else:
        lo, hi = coords.min(0), coords.max(0) + patch_size
        origin, extent = (float(lo[0]), float(lo[1])), (float(hi[0] - lo[0]), float(hi[1] - lo[1]))
    scale = max_size / max(extent)
    canvas = (max(1, int(math.ceil(extent[0] * scale - 1e-6))), max(1, int(math.ceil(extent[1] * scale - 1e-6))))
    g = Geometry(origin, scale, canvas)
    W, H = canvas
    boxes = _patch_boxes(coords, patch_size, g)
    v01 = _paint(boxes, normalise_values(values, norm), (H, W), np.nan)          # (H, W)
    colour = matplotlib.colormaps[cmap](np.nan_to_num(v01))[..., :3] * 255.0       # (H, W, 3)
    if thumbnail is not None:
        bg = np.asarray(thumbnail.convert("RGB").resize((W, H)), dtype=np.float64)
    else:
        bg = np.full((H, W, 3), 255.0)
    has = ~np.isnan(v01)
    rgb = bg.copy()
    rgb[has] = alpha * colour[has] + (1.0 - alpha) * bg[has]
    if segment_ids is not None:
        lab = _paint(boxes, np.asarray(segment_ids, np.int64), (H, W), -2)
        edge = outline_mask(lab)
        if patch_size * scale >= 12:                          # 2-px lines when patches are large enough
            edge[:, :-1] |= edge[:, 1:].copy()
            edge[:-1, :] |= edge[1:, :].copy()
        rgb[edge] = outline_rgb
    img = Image.new("RGB", (MARGIN + W + GAP + BAR_W + LABEL_W, TITLE_H + max(H, 60) + MARGIN + 12), "white")
    img.paste(Image.fromarray(rgb.round().astype(np.uint8)), (MARGIN, TITLE_H))
    _colour_bar(img, cmap, MARGIN + W + GAP, TITLE_H, max(H, 60), bar_label, norm, values)
    font = ImageFont.load_default()
    ImageDraw.Draw(img).text((MARGIN, 8), title, fill="black", font=font)
    return img, g


def _colour_bar(img: Image.Image, cmap: str, x: int, y: int, h: int, label: str, norm: str, values) -> None:
    import matplotlib

    ramp = matplotlib.colormaps[cmap](np.linspace(1.0, 0.0, h))[:, :3] * 255.0        # top = high
    bar = np.repeat(ramp[:, None, :], BAR_W, axis=1).round().astype(np.uint8)
    img.paste(Image.fromarray(bar), (x, y))
    if norm == "percentile":
        ticks = ("100", "50", "0")
    elif norm == "minmax":
        lo, hi = float(np.min(values)), float(np.max(values))
        ticks = (f"{hi:.3g}", f"{(lo + hi) / 2:.3g}", f"{lo:.3g}")
    else:
        ticks = ("1", "0.5", "0")
    d, font = ImageDraw.Draw(img), ImageFont.load_default()
    for t, ty in zip(ticks, (y, y + h // 2 - 5, y + h - 11)):
        d.text((x + BAR_W + 4, ty), t, fill="black", font=font)
    if label:
        d.text((x, y + h + 1), label[:14], fill="black", font=font)


# ------------------------------------------------------------------------------------------ the command

def find_slide_file(slides_dir: str | Path, slide_id: str) -> Path | None:
    """The file (searched recursively) whose normalised name is ``slide_id``; None when absent."""
    for p in sorted(Path(slides_dir).rglob("*")):
        if p.is_file() and normalise_slide_id(p.name) == slide_id:
            return p
    return None


def _thumbnail(path: Path, size: tuple[int, int]):
    import openslide

    with openslide.OpenSlide(str(path)) as s:
        return s.get_thumbnail(size), s.dimensions


def open_scores(source: str | Path, out: Path, store, value: str, slides, quiet: bool):
    """The ``scores.zarr`` root of a predict output; runs ``predict`` first for a run / checkpoint."""
    import zarr

    src = Path(source)
    for cand in (src, src / "scores.zarr"):
        if (cand / "zarr.json").is_file() and (cand / "slides").is_dir():
            return zarr.open_group(str(cand), mode="r")
    if store is None:
        raise UsageError("SOURCE is not a predict output, and no --store was given", path=src,
                         fix="pass the output folder of `samtrain predict`, or a run with --store STORE")
    from trainer.predict import run_predict

    run_predict(src, store, out / "predict", slides=slides, patch_probs=value == "probability", quiet=quiet)
    return zarr.open_group(str(out / "predict" / "scores.zarr"), mode="r")


def run_heatmaps(source: str | Path, out: str | Path, *, store: str | None = None, slides_dir: str | None = None,
                 value: str = "attention", norm: str | None = None, cmap: str = "jet", alpha: float = 0.6,
                 max_size: int = 1024, outlines: bool = True, slides: list[str] | None = None,
                 quiet: bool = False) -> list[Path]:
    """One PNG per slide into ``out``; returns their paths. See the module doc for the figure."""
    from trainer.report_predict import progress_bar

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = open_scores(source, out, store, value, slides, quiet)
    norm = norm or ("percentile" if value == "attention" else "none")
    keys = sorted(root["slides"].group_keys())
    groups = [root["slides"][k] for k in keys]
    if slides:
        groups = [g for g in groups if g.attrs["slide_id"] in set(slides)]
    paths, index = [], {}
    with progress_bar("heatmaps", len(groups), quiet) as advance:
        for g in groups:
            sid = g.attrs["slide_id"]
            name = "scores" if value == "attention" else "patch_prob"
            if name not in g:
                raise UsageError(f"{name!r} missing in the predictions", slide=sid,
                                 fix="run `samtrain predict --patch-probs` (or pass the run and --store)")
            coords, vals = g["coords"][...], g[name][...]
            ps = g.attrs.get("patch_size_level0") or _guess_patch_size(coords)
            thumb = dims = None
            if slides_dir:
                f = find_slide_file(slides_dir, sid)
                if f is None:
                    import sys
                    print(f"warning: slide {sid}: no file in {slides_dir}; drawn without thumbnail", file=sys.stderr)
                else:
                    dims = _thumbnail(f, (1, 1))[1]
                    s = max_size / max(dims)
                    thumb = _thumbnail(f, (int(math.ceil(dims[0] * s)), int(math.ceil(dims[1] * s))))[0]
            p = g.attrs.get("prob") or []
            classes = root.attrs.get("classes", [])
            gf = " + group features" if root.attrs.get("group_features") else ""
            head = f"{sid} | {root.attrs.get('model')}{gf} | {value}"
            if len(p) == 2:
                head += f" | p({classes[1]}) {p[1]:.3f}"
            head += f" | pred {g.attrs.get('pred')}" + (f" | label {g.attrs['label']}" if g.attrs.get("label") else "")
            img, geo = render_heatmap(coords, vals, float(ps), segment_ids=g["segment_ids"][...] if outlines else None,
                                      thumbnail=thumb, slide_dims=dims, title=head, cmap=cmap, alpha=alpha,
                                      max_size=max_size, norm=norm, bar_label=value)
            path = out / f"{slide_key(sid)}.png"
            img.save(path)
            paths.append(path)
            index[sid] = {"png": path.name, **asdict(geo), "norm": norm, "value": value}
            advance()
    (out / "heatmaps.json").write_text(json.dumps(index, indent=1) + "\n")
    return paths


def _guess_patch_size(coords: np.ndarray) -> float:
    """Smallest positive step between sorted x (or y) coords; 256 when there is none."""
    for col in (0, 1):
        d = np.diff(np.unique(coords[:, col]))
        if d.size:
            return float(d.min())
    return 256.0

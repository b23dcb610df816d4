"""The ``clam2sam convert`` options of the SAM pass, and the provider built from them.

``cli_convert`` decorates its command with :func:`add_sam_options` and calls
:func:`build_sam_provider`, which pops the SAM keys from the command's kwargs (the rest goes on to
``ConvertOptions``) and returns a :class:`clam2sam.sam.segment_pass.SamProvider`, or ``None`` without
``--sam-checkpoint``.
"""
from __future__ import annotations

import os
from pathlib import Path

import click

from clam2sam.errors import UsageError
from clam2sam.sam.segment_pass import SamConfig, SamParams, SamProvider

_D = SamParams()
USER_MODELS = ("vit_h", "vit_l", "vit_b")

SAM_EPILOG = """\b
SAM pass (no Segments pickles at hand):
  clam2sam convert feat_dir --slides-dir slides --sam-checkpoint sam_vit_h_4b8939.pth --out cohort.zarr
  # results are cached in OUT/sam_cache and reused when the same command runs again
"""


class _ModelType(click.ParamType):
    """vit_h | vit_l | vit_b, plus types registered with sam_model.register_model_type (e.g. test-only tiny)."""

    name = "vit_h|vit_l|vit_b"

    def convert(self, value, param, ctx):
        from clam2sam.sam.model import model_types

        known = model_types(include_test=True)
        if value not in known:
            self.fail(f"{value!r} is not one of {', '.join(USER_MODELS)}", param, ctx)
        return value


# (option flags, dest, click kwargs); dests are popped by build_sam_provider
_OPTIONS = [
    (("--sam-checkpoint",), "sam_checkpoint",
     dict(type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="PATH",
          help="Run the SAM pass with this segment-anything checkpoint (e.g. sam_vit_h_4b8939.pth) instead of "
               "reading Segments pickles; needs --slides-dir.")),
    (("--sam-model",), "sam_model",
     dict(type=_ModelType(), default="vit_h", show_default=True,
          help="Model type of --sam-checkpoint (vit_h, vit_l or vit_b; checked against the weights).")),
    (("--device",), "device",
     dict(type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
          help="Where SAM runs; auto = cuda when available. Several GPUs with --workers N: one process per GPU.")),
    (("--points-per-side",), "points_per_side",
     dict(type=click.IntRange(min=1), default=_D.points_per_side, show_default=True,
          help="SAM point grid per side (SAM-MIL: 32).")),
    (("--points-per-batch",), "points_per_batch",
     dict(type=click.IntRange(min=1), default=_D.points_per_batch, show_default=True,
          help="Points run through the mask decoder at once (memory vs speed; results unchanged).")),
    (("--pred-iou-thresh",), "pred_iou_thresh",
     dict(type=float, default=_D.pred_iou_thresh, show_default=True, help="Keep masks with predicted IoU above this.")),
    (("--stability-score-thresh",), "stability_score_thresh",
     dict(type=float, default=_D.stability_score_thresh, show_default=True,
          help="Keep masks with stability score at least this.")),
    (("--crop-n-layers",), "crop_n_layers",
     dict(type=click.IntRange(min=0), default=_D.crop_n_layers, show_default=True,
          help="Extra crop layers (1 = whole image + 4 crops, as SAM-MIL).")),
    (("--crop-n-points-downscale-factor",), "crop_n_points_downscale_factor",
     dict(type=click.IntRange(min=1), default=_D.crop_n_points_downscale_factor, show_default=True,
          help="Point grid per crop layer is divided by this.")),
    (("--min-mask-region-area",), "min_mask_region_area",
     dict(type=click.IntRange(min=0), default=_D.min_mask_region_area, show_default=True,
          help="Remove holes/islands smaller than this (SAM pixels); > 0 needs OpenCV.")),
    (("--box-nms-thresh",), "box_nms_thresh",
     dict(type=float, default=_D.box_nms_thresh, show_default=True, help="Box IoU for NMS within a crop.")),
    (("--sam-seed",), "sam_seed",
     dict(type=int, default=0, show_default=True, help="Torch/numpy seed set before each slide's SAM run.")),
    (("--sam-cache",), "sam_cache",
     dict(type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
          help="Where SAM results are cached and reused (default: OUT/sam_cache).")),
    (("--sam-contours-dir",), "sam_contours_dir",
     dict(type=click.Path(exists=True, file_okay=False, path_type=Path), default=None, metavar="DIR",
          help="CLAM <slide>_mask.pkl tissue contours (searched recursively); default tissue region: the "
               "extent of the patches.")),
]
SAM_KEYS = tuple(dest for _, dest, _ in _OPTIONS)
_PARAM_KEYS = ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh", "crop_n_layers",
               "crop_n_points_downscale_factor", "min_mask_region_area", "box_nms_thresh")


def add_sam_options(f):
    """Click decorator adding the SAM pass options (see ``SAM_KEYS``) to a command."""
    for flags, dest, kw in reversed(_OPTIONS):
        f = click.option(*flags, dest, **kw)(f)
    return f


def _defaults() -> dict:
    return {dest: kw.get("default") for _, dest, kw in _OPTIONS}


def build_sam_provider(kwargs: dict, slides_dir=None, store=None) -> SamProvider | None:
    """Pop the SAM options from ``kwargs``; return a provider, or None without ``--sam-checkpoint``.

    Args:
        kwargs: the command's keyword arguments (modified: SAM keys removed).
        slides_dir: value of ``--slides-dir``.
        store: the output store (``--out``); the cache defaults to ``<store>/sam_cache``. When None, the
            current click context's ``out`` parameter is used.

    Raises:
        UsageError: SAM options without a checkpoint, no --slides-dir, both --segments-dir and a checkpoint,
            or a checkpoint that is missing / unsafe / of another model type.
    """
    from clam2sam.errors import SamError
    from clam2sam.sam.model import resolve_device, validate_checkpoint

    vals = {k: kwargs.pop(k, d) for k, d in _defaults().items()}
    if vals["sam_checkpoint"] is None:
        changed = [k for k, d in _defaults().items() if vals[k] != d]
        if changed:
            flags = ", ".join("--" + k.replace("_", "-") for k in changed)
            raise UsageError(f"{flags} only apply to the SAM pass", fix="add --sam-checkpoint PATH, or drop them")
        return None
    if not slides_dir:
        raise UsageError("--sam-checkpoint needs the slide files", fix="pass --slides-dir DIR")
    if kwargs.get("segments_dir"):
        raise UsageError("both --segments-dir and --sam-checkpoint given",
                         fix="use the Segments pickles (drop --sam-checkpoint) or run SAM (drop --segments-dir)")
    ctx = click.get_current_context(silent=True)
    params_ = ctx.params if ctx is not None else {}
    if store is None:
        store = params_.get("out")
    cache = vals["sam_cache"] or (Path(store) / "sam_cache" if store else None)
    params = SamParams(**{k: vals[k] for k in _PARAM_KEYS})
    try:
        resolve_device(vals["device"])
        sha = validate_checkpoint(vals["sam_model"], vals["sam_checkpoint"])
    except SamError as e:
        raise UsageError(e.message, path=e.path, fix=e.fix) from e
    config = SamConfig(model_type=vals["sam_model"], checkpoint=str(Path(vals["sam_checkpoint"]).resolve()),
                       device=vals["device"], params=params, seed=int(vals["sam_seed"]),
                       slides_dir=str(slides_dir), cache_dir=None if cache is None else os.fspath(cache),
                       contours_dir=None if vals["sam_contours_dir"] is None else str(vals["sam_contours_dir"]),
                       workers=int(kwargs.get("workers") or 1), checkpoint_sha256=sha,
                       verbose=not params_.get("quiet", False))
    return SamProvider(config)

"""The ``clam2sam convert`` options of the SAM pass (click only; the provider is built by
:func:`clam2sam.sam.provider.build_sam_provider` from a :class:`~clam2sam.sam.provider.SamPassOptions`).

Each flag is named after its :class:`SamPassOptions` field and takes its default from there.
"""
from __future__ import annotations

import click

from clam2sam.cli import options as opt
from clam2sam.sam.provider import USER_MODELS, SamPassOptions

_D = SamPassOptions()

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


add_sam_options = opt.stack(
    click.option("--sam-checkpoint", type=opt.file_type(exists=False), default=_D.sam_checkpoint, metavar="PATH",
                 help="Run the SAM pass with this segment-anything checkpoint (e.g. sam_vit_h_4b8939.pth) instead "
                      "of reading Segments pickles; needs --slides-dir."),
    click.option("--sam-model", type=_ModelType(), default=_D.sam_model, show_default=True,
                 help="Model type of --sam-checkpoint (vit_h, vit_l or vit_b; checked against the weights)."),
    opt.device_option("Where SAM runs; auto = cuda when available. Several GPUs with --workers N: one process "
                      "per GPU.", default=_D.device, choices=["auto", "cpu", "cuda"]),
    click.option("--points-per-side", type=click.IntRange(min=1), default=_D.points_per_side, show_default=True,
                 help="SAM point grid per side (SAM-MIL: 32)."),
    click.option("--points-per-batch", type=click.IntRange(min=1), default=_D.points_per_batch, show_default=True,
                 help="Points run through the mask decoder at once (memory vs speed; results unchanged)."),
    click.option("--pred-iou-thresh", type=float, default=_D.pred_iou_thresh, show_default=True,
                 help="Keep masks with predicted IoU above this."),
    click.option("--stability-score-thresh", type=float, default=_D.stability_score_thresh, show_default=True,
                 help="Keep masks with stability score at least this."),
    click.option("--crop-n-layers", type=click.IntRange(min=0), default=_D.crop_n_layers, show_default=True,
                 help="Extra crop layers (1 = whole image + 4 crops, as SAM-MIL)."),
    click.option("--crop-n-points-downscale-factor", type=click.IntRange(min=1),
                 default=_D.crop_n_points_downscale_factor, show_default=True,
                 help="Point grid per crop layer is divided by this."),
    click.option("--min-mask-region-area", type=click.IntRange(min=0), default=_D.min_mask_region_area,
                 show_default=True, help="Remove holes/islands smaller than this (SAM pixels); > 0 needs OpenCV."),
    click.option("--box-nms-thresh", type=float, default=_D.box_nms_thresh, show_default=True,
                 help="Box IoU for NMS within a crop."),
    click.option("--sam-seed", type=int, default=_D.sam_seed, show_default=True,
                 help="Torch/numpy seed set before each slide's SAM run."),
    opt.sam_cache_option("Where SAM results are cached and reused (default: OUT/sam_cache).", metavar="DIR"),
    click.option("--sam-contours-dir", type=opt.dir_type(), default=_D.sam_contours_dir, metavar="DIR",
                 help="CLAM <slide>_mask.pkl tissue contours (searched recursively); default tissue region: the "
                      "extent of the patches."),
)
"""Click decorator adding the SAM pass options (the fields of :class:`SamPassOptions`) to a command."""

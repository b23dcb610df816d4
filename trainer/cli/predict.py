"""``samtrain predict``, ``samtrain eval`` and ``samtrain heatmap``."""
from __future__ import annotations

import json

import click

from clam2sam.cli import options as opt
from trainer.heatmap import NORMS, VALUES

PREDICT_EPILOG = """\b
Examples:
  samtrain predict runs/sammil cohort.zarr --out preds/            # ensemble of every fold of the run
  samtrain predict runs/sammil/fold_r0_f2 new.zarr --out preds/    # one fold
  samtrain predict runs/abmil/fold_r0_f0/best.pt new.zarr --out p/ --patch-probs
\b
Outputs: preds/predictions.csv (slide_id, label, p_<class>, prob, pred, threshold, per-fold p),
preds/scores.zarr (per slide: scores, fold_scores, coords, segment_ids[, group_scores, patch_prob];
row i of every per-patch array is row i of the store's coords).
The threshold is the one the run chose on validation (mean over folds for an ensemble).
"""

EVAL_EPILOG = """\b
Examples:
  samtrain eval runs/sammil test.zarr --out eval/                  # labels from the store
  samtrain eval runs/sammil test.zarr --out eval/ --labels test_labels.csv
\b
Outputs: everything predict writes, plus eval/metrics.json (AUC, accuracy, F1, balanced accuracy,
confusion matrix), eval/confusion_matrix.csv and eval/roc.png.
"""

HEATMAP_EPILOG = """\b
Examples:
  samtrain heatmap preds/ --out maps/                              # from a predict output
  samtrain heatmap runs/sammil --store cohort.zarr --out maps/ --slides-dir /data/wsi
  samtrain heatmap preds/ --out maps/ --value probability          # needs predict --patch-probs
  samtrain heatmap runs/abmil --store c.zarr --out maps/ --slide slide_007 --cmap viridis --alpha 0.8
\b
One PNG per slide (maps/<slide>.png): patches at their level-0 position coloured by attention
(percentile within the slide) or tumour probability, segment outlines from the store, colour bar and
title; maps/heatmaps.json records each figure's origin and scale.
"""

_source = click.argument("source", type=opt.LocalPath(exists=True))
_store = click.argument("store", type=opt.dir_type(path_type=None))
_slide = opt.slide_option("Only this slide (repeatable).")
_quiet = opt.quiet_option("No progress bar.")
_common = opt.stack(
    opt.labels_option("CSV slide_id,label[,case_id]. Default: the store's slide labels.", exists=True),
    _slide,
    click.option("--patch-probs", is_flag=True,
                 help="Also write each patch's probability (the model on a bag of that patch alone)."),
    opt.device_option("cpu | cuda[:i]", default="cpu"),
    _quiet,
)
_out = opt.out_option("Output folder.", required=True)


@click.command("predict", epilog=PREDICT_EPILOG, context_settings={"max_content_width": 100})
@_source
@_store
@_out
@_common
def predict(source, store, out, labels, slides, patch_probs, device, quiet):
    """Predict every slide of STORE with SOURCE (a run directory, a fold directory or a checkpoint)."""
    from trainer.predict import run_predict

    rows = run_predict(source, store, out, labels=labels, slides=list(slides) or None, patch_probs=patch_probs,
                       device=device, quiet=quiet)
    click.echo(f"{len(rows)} slides -> {out}/predictions.csv, {out}/scores.zarr", err=True)


@click.command("eval", epilog=EVAL_EPILOG, context_settings={"max_content_width": 100})
@_source
@_store
@_out
@_common
@opt.json_option("Print metrics.json to stdout.")
def eval_(source, store, out, labels, slides, patch_probs, device, quiet, as_json):
    """Predict a labelled STORE with SOURCE and score it (AUC, accuracy, F1, confusion matrix, ROC)."""
    from trainer.evaluate import metrics_table, run_eval

    res = run_eval(source, store, out, labels=labels, slides=list(slides) or None, patch_probs=patch_probs,
                   device=device, quiet=quiet)
    click.echo(metrics_table(res), err=True)
    if as_json:
        click.echo(json.dumps(res, indent=2))


@click.command("heatmap", epilog=HEATMAP_EPILOG, context_settings={"max_content_width": 100})
@_source
@opt.out_option("Output folder for the PNGs.", required=True)
@click.option("--store", type=opt.dir_type(path_type=None),
              help="Store to predict when SOURCE is a run or checkpoint (not needed for a predict output).")
@opt.slides_dir_option("Folder of slide files: draw over the slide thumbnail (matched by normalised slide id).",
                       path_type=None)
@click.option("--value", type=click.Choice(VALUES), default="attention", show_default=True,
              help="Colour by attention / instance score, or by per-patch tumour probability.")
@click.option("--norm", type=click.Choice(NORMS), default=None,
              help="Colour scale. Default: percentile for attention, none for probability.")
@click.option("--cmap", default="jet", show_default=True, help="Matplotlib colour map.")
@opt.alpha_option(default=0.6, type=click.FloatRange(0, 1), help="Opacity of the patches over the thumbnail.")
@click.option("--max-size", default=1024, show_default=True, type=click.IntRange(16, 16384),
              help="Long side of the drawing in pixels.")
@click.option("--outlines/--no-outlines", default=True, show_default=True, help="Draw segment outlines.")
@_slide
@_quiet
def heatmap(source, out, store, slides_dir, value, norm, cmap, alpha, max_size, outlines, slides, quiet):
    """Draw one heatmap PNG per slide from SOURCE (a predict output, or a run / checkpoint with --store)."""
    import matplotlib

    from clam2sam.errors import UsageError
    from trainer.heatmap import run_heatmaps

    if cmap not in matplotlib.colormaps:
        raise UsageError(f"unknown colour map {cmap!r}", fix="use a matplotlib name such as jet, viridis, magma")
    paths = run_heatmaps(source, out, store=store, slides_dir=slides_dir, value=value, norm=norm, cmap=cmap,
                         alpha=alpha, max_size=max_size, outlines=outlines, slides=list(slides) or None,
                         quiet=quiet)
    click.echo(f"{len(paths)} heatmaps -> {out}", err=True)


commands = [predict, eval_, heatmap]

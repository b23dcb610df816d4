"""``samtrain fit``: cross-validated training of SAM-MIL or a baseline on a clam2sam store."""
from __future__ import annotations

import json
import os

import click

from clam2sam.cli import options as opt
from trainer.config import (ATTN_INITS, AREA_UNITS, CON_FORMS, DEFAULT_SIGMOID_A, DEFAULT_SIGMOID_B, GROUP_BY, MASK_MODES,
                            MONITORS, RATIO_FNS, SCHEDULERS, TrainConfig)

EPILOG = """\b
Examples:
  samtrain fit cohort.zarr --out runs/sammil                      # SAM-MIL, 5-fold CV, shipped defaults
  samtrain fit cohort.zarr --out runs/abmil --model abmil         # AB-MIL baseline, same splits (same seed)
  samtrain fit cohort.zarr --out runs/r3 --repeats 3 --folds 5    # 3 x 5-fold with seeds 2021..2023
  samtrain fit cohort.zarr --out runs/t3 --mask random            # paper Table 3 ablation
  samtrain fit cohort.zarr --out runs/t4 --ratio-fn linear        # paper Table 4 ablation
  samtrain fit cohort.zarr --out runs/ref --reference-sigmoid     # reference area unit and values
  samtrain fit cohort.zarr --out runs/s --labels labels.csv --splits clam/splits/task_1_100
  samtrain fit cohort.zarr --out runs/tuned --search beta=0,0.1,1 --inits 2   # nested selection
\b
Re-running the same command resumes an interrupted run (finished folds are kept).
Outputs: config.json, splits.json, fold_*/metrics.csv, fold_*/best.pt, fold_*/last.pt,
fold_*/predictions.csv, results.json (with flags for degenerate folds), summary.md, report/index.html.
"""


def _opt_group(f):
    """All TrainConfig options (decorators applied bottom-up)."""
    d = TrainConfig()
    opts = [
        opt.out_option("Run directory (created; re-run the same command to resume).", required=True),
        opt.labels_option("CSV slide_id,label[,case_id] (header optional). Default: the store's slide labels."),
        click.option("--skip-damaged", is_flag=True,
                     help="Train without slides whose store metadata is damaged (default: stop with an error "
                          "naming them). Left-out slides and why: summary and results.json excluded_slides."),
        click.option("--classes", help="Comma-separated class order; binary: the second is positive. "
                                       "Default: sorted labels."),
        # model
        click.option("--model", default=d.model, show_default=True, help="Model from the registry "
                     "(`samtrain fit --list-models`)."),
        click.option("--backbone", default=d.backbone, show_default=True, help="MIL network SAM-MIL trains."),
        click.option("--group-features/--no-group-features", default=None,
                     help="Append one group-feature token per segment. Default: on for sam-mil, off otherwise."),
        click.option("--hidden-dim", default=d.hidden_dim, show_default=True, type=int),
        click.option("--attn-dim", default=d.attn_dim, show_default=True, type=int),
        click.option("--dropout", default=d.dropout, show_default=True, type=float),
        click.option("--standardize/--no-standardize", default=d.standardize, show_default=True,
                     help="Standardise each feature dimension with the mean and sd of the fold's training "
                          "patches (saved in the checkpoint; predict applies it)."),
        click.option("--attn-init", type=click.Choice(ATTN_INITS), default=d.attn_init, show_default=True,
                     help="xavier: random start, as the reference code; uniform: attention starts as mean "
                          "pooling (last attention layer zeroed). Uniform starts found rare lesions less "
                          "often in our measurements (bench/RESULTS.md)."),
        click.option("--max-instance-weight", default=d.max_instance_weight, show_default=True, type=float,
                     help="Weight of the auxiliary max-instance CE for attention models (abmil, abmil-gated, "
                          "sam-mil): the bag classifier must also find the class in the most convincing "
                          "patch. Lets attention find rare lesions in big bags; 0 = off."),
        # SG2M
        click.option("--mask", type=click.Choice(MASK_MODES), default=d.mask, show_default=True,
                     help="Instance masking (paper Table 3): none | random (all tokens) | non-group | sam (SG2M)."),
        click.option("--ratio-fn", type=click.Choice(RATIO_FNS), default=d.ratio_fn, show_default=True,
                     help="Per-group ratio function for --mask sam (paper Table 4)."),
        click.option("--mask-ratio", "mask_ratio", default=d.mask_ratio, show_default=True, type=float,
                     help="MR_target in [0, 1)."),
        click.option("--mask-warmup", "mask_warmup", default=d.mask_warmup, show_default=True, type=int,
                     help="Epochs over which the mask ratio ramps up linearly from 0 to --mask-ratio "
                          "(epoch 0 trains on whole bags); 0 = SG2M from the first step."),
        click.option("--area-unit", type=click.Choice(AREA_UNITS), default=d.area_unit, show_default=True,
                     help="Group area A_k: segment size relative to the slide's mean segment (default; "
                          "R spreads over segment sizes on every slide), share of the slide's patches, or "
                          "SAM-image pixels (reference)."),
        click.option("--sigmoid-a", type=float, default=None,
                     help="Slope a of R = sigmoid(a*A + b). Default: 2 for relative-size, 250 for "
                          "patch-fraction, 5e-4 for sam-pixels."),
        click.option("--sigmoid-b", type=float, default=None,
                     help="Shift b. Default: -2 for relative-size (R = 0.5 at the mean segment), -2.5 otherwise."),
        click.option("--group-by", type=click.Choice(GROUP_BY), default=d.group_by, show_default=True,
                     help="segment, or sam-area (reference: patches with equal relative_area)."),
        click.option("--reference-sigmoid", is_flag=True,
                     help="Reference mode: --area-unit sam-pixels --group-by sam-area --sigmoid-a 5e-4 "
                          f"--sigmoid-b {DEFAULT_SIGMOID_B} --mask-ratio 0.9."),
        # bag level
        click.option("--pseudo-bags", "pseudo_bags", default=d.pseudo_bags, show_default=True, type=int,
                     help="m: pseudo-bags cut from the masked bag."),
        opt.alpha_option(default=d.alpha, help="Pseudo-bag loss weight."),
        click.option("--beta", default=d.beta, show_default=True, type=float, help="Consistency loss weight."),
        click.option("--con-form", type=click.Choice(CON_FORMS), default=d.con_form, show_default=True,
                     help="within-share: share of the log-attention variance that lies within segments, "
                          "in [0, 1] whatever the bag size (appendix F, size-invariant); variance: sum over "
                          "segments of Var(T*attention) (grows with the bag); reference-l2: the reference "
                          "code's formula."),
        click.option("--con-unassigned/--no-con-unassigned", default=d.con_unassigned, show_default=True,
                     help="Also pull together the attention of patches in no segment."),
        # protocol
        click.option("--folds", default=d.folds, show_default=True, type=int),
        click.option("--repeats", default=d.repeats, show_default=True, type=int,
                     help="Repeat the K-fold with seeds seed, seed+1, ..."),
        click.option("--val-frac", default=d.val_frac, show_default=True, type=float,
                     help="Share of each training part used for validation (selection, stopping, threshold)."),
        click.option("--splits", "splits_dir", type=opt.dir_type(path_type=None),
                     help="Reuse CLAM splits_<k>.csv files instead of the built-in CV."),
        opt.seed_option(default=d.seed),
        # optimisation
        click.option("--lr", default=d.lr, show_default=True, type=float),
        click.option("--weight-decay", default=d.weight_decay, show_default=True, type=float),
        click.option("--scheduler", type=click.Choice(SCHEDULERS), default=d.scheduler, show_default=True),
        click.option("--max-epochs", default=d.max_epochs, show_default=True, type=int),
        click.option("--batch-size", default=d.batch_size, show_default=True, type=int,
                     help="Bags per optimiser step (gradient accumulation; one bag per forward)."),
        click.option("--patience", default=d.patience, show_default=True, type=int,
                     help="Early stopping: epochs without a better validation score."),
        click.option("--min-epochs", default=d.min_epochs, show_default=True, type=int,
                     help="Epochs before this are never selected and do not count for --patience "
                          "(default: min(3, max-epochs - 1)); a fold's early validation AUC often saturates "
                          "by chance on a small validation split."),
        click.option("--search", "search", multiple=True, metavar="NAME=V1,V2,...",
                     help="Nested selection: try these values on each outer fold's training part and keep "
                          "the best on its validation split (repeatable; e.g. --search beta=0,0.1,1 "
                          "--search lr=2e-4,1e-3). Test folds never influence the choice."),
        click.option("--inits", default=d.inits, show_default=True, type=int,
                     help="Initialisations per setting; the best on validation is kept (guards against an "
                          "unlucky start)."),
        click.option("--reinit-below", "reinit_below", default=d.reinit_below, show_default=True, type=float,
                     help="Train another initialisation of a fold while its best validation AUC stays below "
                          "this (a start whose attention found nothing); the best on validation is kept. "
                          "0 = off."),
        click.option("--max-inits", "max_inits", default=d.max_inits, show_default=True, type=int,
                     help="At most this many initialisations per fold (and per --search setting) with "
                          "--reinit-below."),
        click.option("--monitor", type=click.Choice(MONITORS), default=d.monitor, show_default=True,
                     help="Validation score for selection: AUC (ties: lower loss) or loss."),
        # runtime
        click.option("--num-workers", default=d.num_workers, show_default=True, type=int,
                     help="DataLoader worker processes (fork)."),
        click.option("--threads", default=d.threads, show_default=True, type=int,
                     help="torch CPU threads (0 = torch default). Use 1 on a busy machine with small bags."),
        click.option("--cache/--no-cache", default=d.cache, show_default=True,
                     help="Keep bags in RAM after their first read."),
        opt.device_option("auto | cpu | cuda[:i]", default=d.device),
        click.option("--ddp/--no-ddp", default=None,
                     help="DistributedDataParallel across the processes torchrun started (default: on when "
                          "launched by torchrun with WORLD_SIZE > 1). See docs/cluster.md."),
        click.option("--resume/--no-resume", default=d.resume, show_default=True),
        opt.overwrite_option("Delete an existing run in --out first."),
        opt.quiet_option("No progress bars."),
        opt.json_option("Print results.json to stdout."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _list_models(ctx, _param, value):
    if value:
        from trainer.models import list_models

        click.echo("\n".join(list_models()))
        ctx.exit(0)


@click.command("fit", epilog=EPILOG, context_settings={"max_content_width": 100})
@click.argument("store", type=opt.dir_type(path_type=None))
@_opt_group
@click.option("--list-models", is_flag=True, is_eager=True, expose_value=False, callback=_list_models,
              help="List registered models and exit.")
def fit(store, as_json, reference_sigmoid, classes, ddp, **kw):
    """Train and evaluate a MIL model on STORE with stratified, case-grouped cross-validation.

    Model selection, early stopping and the decision threshold use a validation split carved from each
    training part; test folds are only scored. Prints a summary table (stderr) and writes RUN/results.json.
    """
    from rich.console import Console

    from trainer.report import summary_table
    from trainer.run import run_fit

    if reference_sigmoid:
        kw.update(area_unit="sam-pixels", group_by="sam-area", sigmoid_a=DEFAULT_SIGMOID_A["sam-pixels"],
                  sigmoid_b=DEFAULT_SIGMOID_B, mask_ratio=0.9)
    from trainer.search import parse_search

    kw["search"] = parse_search(kw.get("search"))
    cfg = TrainConfig(store=store, classes=[c.strip() for c in classes.split(",")] if classes else None, **kw)
    console = Console(stderr=True)
    results = run_fit(cfg, console=console, ddp=ddp)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun only rank 0 reports
    console.print(summary_table(results), markup=False, highlight=False)
    console.print(f"results: {cfg.out}/results.json", markup=False, highlight=False)
    if as_json:
        click.echo(json.dumps(results, indent=2))


commands = [fit]

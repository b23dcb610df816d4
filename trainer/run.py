"""The cross-validation driver behind ``samtrain fit``.

Output directory::

    RUN/config.json                 resolved TrainConfig
    RUN/splits.json                 slide ids of train / val / test for every fold
    RUN/fold_r<R>_f<K>/metrics.csv  one row per epoch (losses, val loss / AUC, lr, seconds)
    RUN/fold_r<R>_f<K>/last.pt      resumable state, rewritten atomically every epoch
    RUN/fold_r<R>_f<K>/best.pt      best epoch on validation (model, optimizer, config, epoch, schema)
    RUN/fold_r<R>_f<K>/predictions.csv   val + test slide probabilities of the best model
    RUN/fold_r<R>_f<K>/done.json    the fold's results; its presence marks the fold finished
    RUN/results.json                per fold + mean/std of every figure
    RUN/summary.md                  the summary table

Re-running the same command resumes: finished folds are read back, an interrupted fold continues from
``last.pt`` (model, optimizer, scheduler, early-stopping state, RNG states). One fold: trainer/fold.py.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from clam2sam.errors import UsageError
from clam2sam.store.writer import open_store
from trainer.config import TrainConfig
from trainer.cohort import Cohort, describe_excluded, load_cohort
from trainer.distributed import SINGLE, DistContext, init_from_env
from trainer.fold import run_outer_fold
from trainer.masking import ratio_spread
from trainer.metrics import mean_std
from trainer.models import model_class
from trainer.protocol_checks import fold_flags, median_iqr, run_warnings
from trainer.report import NullProgress, make_progress, summary_table
from trainer.splits import Split, check_no_case_leak, make_cv_splits, read_clam_splits


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available", fix="use --device cpu")
    return torch.device(name)


# ------------------------------------------------------------------------------------------ out dir

def prepare_out_dir(cfg: TrainConfig) -> bool:
    """Create / validate the run directory. Returns True when resuming an existing run."""
    out = Path(cfg.out)
    cfg_path = out / "config.json"
    if out.exists() and any(out.iterdir()):
        if not cfg_path.exists():
            raise UsageError("--out exists and is not a samtrain run directory", path=out,
                             fix="choose another --out or delete it")
        if cfg.overwrite:
            shutil.rmtree(out)
        else:
            old = TrainConfig.load(cfg_path)
            diffs = cfg.differences(old)
            if diffs:
                raise UsageError(f"--out holds a run with other settings ({', '.join(diffs)})", path=out,
                                 fix="pass --overwrite to start again, or use another --out")
            if not cfg.resume:
                raise UsageError("--out already holds this run and --no-resume was given", path=out,
                                 fix="pass --overwrite to start again")
            cfg.save(cfg_path)
            return True
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(cfg_path)
    return False


def write_splits(path: Path, splits: list[Split], cohort: Cohort) -> None:
    ids = np.asarray(cohort.slide_ids, dtype=object)
    data = [{"name": s.name, "repeat": s.repeat, "fold": s.fold,
             **{part: ids[getattr(s, part)].tolist() for part in ("train", "val", "test")}} for s in splits]
    path.write_text(json.dumps(data, indent=1) + "\n")


# ------------------------------------------------------------------------------------------ the run

def summarise(folds: list[dict]) -> dict:
    """mean +/- std over folds of every test / optimistic figure."""
    out = {"test": {}, "test_optimistic": {}, "val": {}}
    for section, keys in (("test", ("auc", "acc", "f1", "bal_acc")), ("test_optimistic", ("acc", "f1", "bal_acc")),
                          ("val", ("auc",))):
        for k in keys:
            vals = [f[section][k] for f in folds if section in f and f[section].get(k) is not None]
            if vals:
                out[section][k] = {**mean_std(vals), **median_iqr(vals)}
    if not out["test_optimistic"]:
        del out["test_optimistic"]
    return out


def run_fit(cfg: TrainConfig, console=None, ddp: bool | None = None) -> dict:
    """Run the whole protocol; returns the results dict also written to ``results.json``.

    Args:
        ddp: None: DistributedDataParallel when launched by torchrun (WORLD_SIZE > 1); True: require
            torchrun (``samtrain fit --ddp``); False: never. See trainer/distributed.py.
    """
    ctx = SINGLE if ddp is False else init_from_env(cfg.device, require=bool(ddp))
    try:
        return _run_fit(cfg, console, ctx)
    finally:
        ctx.close()


def _run_fit(cfg: TrainConfig, console, ctx: DistContext) -> dict:
    cfg = cfg.resolve()
    cohort = load_cohort(cfg.store, cfg.labels, cfg.classes, skip_damaged=cfg.skip_damaged)
    if cohort.excluded and ctx.is_main and console is not None:    # never silent: which slides, and why
        console.print(describe_excluded(cohort.excluded, len(cohort.slide_ids) + len(cohort.excluded)),
                      markup=False, highlight=False)
    in_dim = open_store(cfg.store).feature_dim
    if not in_dim:
        raise UsageError("store root has no feature_dim", path=cfg.store, fix="re-run `clam2sam convert`")
    uses_sg2m = model_class(cfg.model).uses_sg2m
    if uses_sg2m and cfg.mask == "sam" and cfg.area_unit == "sam-pixels":
        a = open_store(cfg.store).read_array(cohort.slide_ids[0], "segment_sam_area")
        if a.size and not np.any(a):
            raise UsageError("--area-unit sam-pixels but the store has no SAM-pixel areas (all 0)",
                             slide=cohort.slide_ids[0], path=cfg.store,
                             fix="use the default --area-unit relative-size")
    if cfg.splits_dir:
        splits = read_clam_splits(cfg.splits_dir, cohort.slide_ids)
    else:
        splits = make_cv_splits(cohort.y, cohort.case_ids, folds=cfg.folds, repeats=cfg.repeats,
                                val_frac=cfg.val_frac, seed=cfg.seed)
    for s in splits:
        check_no_case_leak(s, cohort.case_ids)
    resumed = ctx.rank0_call(prepare_out_dir, cfg)
    out = Path(cfg.out)
    if ctx.is_main:
        write_splits(out / "splits.json", splits, cohort)
    device = ctx.device() or pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    folds = []
    with (make_progress(cfg, len(splits), console) if ctx.is_main else NullProgress()) as progress:
        for s in splits:
            folds.append(run_outer_fold(cfg, cohort, s, int(in_dim), device, out / f"fold_{s.name}", progress,
                                        ctx=ctx))
            progress.end_fold(folds[-1])
    for f, flags in zip(folds, fold_flags(folds)):
        f["flags"] = flags
    warnings = run_warnings(splits, cohort.y, cohort.slide_ids, cohort.case_ids, cfg.monitor, len(cohort.classes))
    results = {"config": cfg.to_dict(), "classes": cohort.classes, "n_slides": len(cohort.slide_ids),
               "excluded_slides": cohort.excluded,
               "class_counts": {c: int((cohort.y == i).sum()) for i, c in enumerate(cohort.classes)},
               "store_digest": zlib.crc32("\n".join(cohort.slide_ids).encode()), "resumed": resumed,
               "folds": folds, "summary": summarise(folds), "warnings": warnings,
               "flagged_folds": [f["split"] for f in folds if f["flags"]], "wall_seconds": time.perf_counter() - t0,
               "distributed": {"world_size": ctx.world_size, "backend": ctx.backend},
               "notes": {"test": "threshold chosen on the validation split (honest)",
                         "test_optimistic": "threshold chosen on the test fold itself (optimistic; only for "
                                            "comparison with published numbers)"}}
    if uses_sg2m and cfg.mask == "sam":
        results["sg2m_ratio_spread"] = ratio_spread(open_store(cfg.store), cohort.slide_ids, cfg)
    if ctx.is_main:  # written once, by rank 0
        from trainer.run_files import pooled_test_auc_or_nan  # bootstrap 95 % interval over slides

        results["summary"]["test_auc_pooled"] = pooled_test_auc_or_nan(out, results)
        tmp = out / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=2, allow_nan=True) + "\n")
        os.replace(tmp, out / "results.json")
        table = summary_table(results)
        (out / "summary.md").write_text(table + "\n")
        from trainer.run_report import write_report_or_warn  # RUN/report/ (a failure only warns)

        write_report_or_warn(out)
    return results

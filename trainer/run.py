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
``last.pt`` (model, optimizer, scheduler, early-stopping state, RNG states).
"""
from __future__ import annotations

import csv
import json
import os
import random
import shutil
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from clam2sam.errors import UsageError
from clam2sam.store.writer import open_store
from trainer.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from trainer.config import TrainConfig
from trainer.feature_stats import training_feature_stats
from trainer.data import BagDataset, Cohort, collate_one, describe_excluded, load_cohort
from trainer.distributed import SINGLE, DistContext, init_from_env
from trainer.loop import evaluate, train_one_epoch
from trainer.metrics import evaluate_fold, mean_std, safe_auc
from trainer.models import build_model, model_class
from trainer.models.base import METRIC_TERMS
from trainer.report import NullProgress, make_progress, summary_table
from trainer.masking import ratio_spread
from trainer.protocol_checks import fold_flags, median_iqr, run_warnings
from trainer.search import candidate_config, candidates, pick, selection_key
from trainer.splits import Split, check_no_case_leak, make_cv_splits, read_clam_splits

# metrics.csv header: the loss columns come from the models' METRIC_TERMS (trainer/models/base.py)
METRIC_FIELDS = ("epoch", "lr", "train_loss", *(f"train_{t}" for t in METRIC_TERMS), "val_loss", "val_auc",
                 "improved", "train_seconds")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available", fix="use --device cpu")
    return torch.device(name)


def _fold_seed(cfg: TrainConfig, split: Split, init: int = 0) -> int:
    return cfg.seed + 7919 * split.repeat + 104729 * split.fold + 1299709 * init


def _loader(ds, cfg: TrainConfig, order=None, seed: int = 0) -> DataLoader:
    kw = {}
    if cfg.num_workers > 0:
        kw = {"multiprocessing_context": "fork", "persistent_workers": cfg.cache}
    # own generator: creating a loader iterator must not consume the global RNG (resume = same numbers)
    return DataLoader(ds, batch_size=1, sampler=order if order is not None else None, shuffle=False,
                      collate_fn=collate_one, num_workers=cfg.num_workers,
                      generator=torch.Generator().manual_seed(seed), **kw)


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


def _write_metrics_csv(path: Path, history: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: row.get(k, "") for k in METRIC_FIELDS})
    os.replace(tmp, path)


def _write_predictions(path: Path, parts: dict, classes: list[str]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "slide_id", "label", *[f"p_{c}" for c in classes]])
        for split, pr in parts.items():
            for sid, y, p in zip(pr.slide_ids, pr.y, pr.prob):
                w.writerow([split, sid, classes[int(y)], *[f"{v:.6g}" for v in p]])


def _score(cfg: TrainConfig, val_auc: float, val_loss: float) -> tuple:
    """Model-selection key (higher is better): AUC then lower loss, or loss alone (as --search's choice)."""
    return selection_key(val_auc, val_loss, cfg.monitor)


# ------------------------------------------------------------------------------------------- a fold

def run_outer_fold(cfg: TrainConfig, cohort: Cohort, split: Split, in_dim: int, device, fold_dir: Path,
                   progress=None, ctx: DistContext = SINGLE) -> dict:
    """One outer fold: :func:`run_fold` directly, or every ``--search`` / ``--inits`` candidate in
    ``fold_dir/cand_<i>`` and the one with the best validation score (trainer/search.py).

    The chosen candidate's ``best.pt``, ``metrics.csv`` and ``predictions.csv`` are copied into
    ``fold_dir`` so that predict, heatmap and the report see one model per fold.
    """
    if not cfg.search and cfg.inits <= 1:
        return run_fold(cfg, cohort, split, in_dim, device, fold_dir, progress, ctx)
    done = fold_dir / "done.json"
    finished = ctx.rank0_call(lambda: json.loads(done.read_text()) if done.exists() and cfg.resume else None)
    if finished is not None:
        return finished
    cands = candidates(cfg.search, cfg.inits)
    results = []
    for i, cand in enumerate(cands):
        ccfg = candidate_config(cfg, cand)
        r = run_fold(ccfg, cohort, split, in_dim, device, fold_dir / f"cand_{i:02d}", progress, ctx,
                     init=cand["init"])
        results.append(r)
    k = pick(results, cfg.monitor)
    res = dict(results[k])
    res["search"] = {"chosen": k, "chosen_params": cands[k]["params"], "chosen_init": cands[k]["init"],
                     "candidates": [{"params": c["params"], "init": c["init"], "val_auc": r["val"].get("auc"),
                                     "val_loss": r["val"].get("loss"), "best_epoch": r["best_epoch"]}
                                    for c, r in zip(cands, results)],
                     "note": "chosen on the validation split of the training part; test never used"}
    if ctx.is_main:
        for name in ("best.pt", "metrics.csv", "predictions.csv"):
            shutil.copy2(fold_dir / f"cand_{k:02d}" / name, fold_dir / name)
        tmp = done.with_name("done.json.tmp")
        tmp.write_text(json.dumps(res, indent=2) + "\n")
        os.replace(tmp, done)
    return res


def run_fold(cfg: TrainConfig, cohort: Cohort, split: Split, in_dim: int, device, fold_dir: Path,
             progress=None, ctx: DistContext = SINGLE, init: int = 0) -> dict:
    """Train one fold with early stopping on validation; evaluate the best model on test.

    Under torchrun (``ctx``, see trainer/distributed.py) ranks share the training bags and the evaluation,
    and only rank 0 writes files.
    """
    progress = progress or NullProgress()
    fold_dir.mkdir(parents=True, exist_ok=True)
    done = fold_dir / "done.json"
    finished = ctx.rank0_call(lambda: json.loads(done.read_text()) if done.exists() and cfg.resume else None)
    if finished is not None:
        return finished
    y = cohort.y
    C = len(cohort.classes)
    ds = {p: BagDataset(cfg.store, [cohort.slide_ids[i] for i in getattr(split, p)], y[getattr(split, p)],
                        cache=cfg.cache) for p in ("train", "val", "test")}
    fseed = _fold_seed(cfg, split, init)
    seed_everything(fseed)
    model = build_model(cfg.model, in_dim, C, cfg)
    if cfg.attn_init == "uniform":
        model.init_uniform_attention()
    if cfg.standardize:
        model.set_feature_stats(*training_feature_stats(cfg.store, [cohort.slide_ids[i] for i in split.train]))
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.max_epochs, eta_min=0.0)
                 if cfg.scheduler == "cosine" else None)
    st = {"next_epoch": 0, "best": None, "best_epoch": -1, "bad_epochs": 0, "history": [], "stopped": False}
    last = fold_dir / "last.pt"
    ck = ctx.rank0_call(lambda: load_checkpoint(last) if last.exists() and cfg.resume else None)
    if ck is not None:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if scheduler is not None and "scheduler" in ck:
            scheduler.load_state_dict(ck["scheduler"])
        st = ck["extra"]["state"]
        set_rng_state(ck["rng"])
    val_loader = _loader(ds["val"], cfg, ctx.eval_indices(len(ds["val"])))
    train_model = ctx.wrap(model)  # DDP under torchrun (broadcasts rank 0's parameters)
    cfg_dict = cfg.to_dict()
    extra_common = {"classes": cohort.classes, "split": split.name, "in_dim": in_dim}
    progress.start_fold(split.name, cfg.max_epochs, st["next_epoch"], len(ds["train"]))
    epoch = st["next_epoch"]
    while epoch < cfg.max_epochs and not st["stopped"]:
        order = torch.randperm(len(ds["train"]), generator=torch.Generator().manual_seed(fseed * 1000 + epoch))
        tr_loader = _loader(ds["train"], cfg, ctx.train_sampler(order.tolist()), fseed + epoch)
        tr = train_one_epoch(train_model, tr_loader, optimizer, device, accumulate=ctx.accumulate(cfg.batch_size),
                             on_step=progress.step)
        tr = ctx.reduce_train_stats(tr, len(tr_loader))
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        val = ctx.gather_predictions(evaluate(model, val_loader, device), len(ds["val"]))
        val_auc = safe_auc(val.y, val.prob)
        score = _score(cfg, val_auc, val.loss)
        # epochs before min_epochs are never selected (epoch 0's validation AUC often saturates by chance)
        # and never count for patience; the last epoch is always selectable
        selectable = epoch >= cfg.min_epochs or epoch + 1 == cfg.max_epochs
        improved = selectable and (st["best"] is None or tuple(score) > tuple(st["best"]))
        if improved:
            st["best"], st["best_epoch"], st["bad_epochs"] = list(score), epoch, 0
            if ctx.is_main:
                save_checkpoint(fold_dir / "best.pt", model=model, optimizer=optimizer, config=cfg_dict,
                                epoch=epoch, extra={**extra_common, "val_auc": val_auc, "val_loss": val.loss},
                                with_rng=False)
        elif selectable:
            st["bad_epochs"] += 1
        st["history"].append({"epoch": epoch, "lr": lr, **tr, "val_loss": val.loss, "val_auc": val_auc,
                              "improved": int(improved)})
        st["stopped"] = st["bad_epochs"] >= cfg.patience and epoch + 1 >= cfg.min_epochs
        st["next_epoch"] = epoch + 1
        if ctx.is_main:
            _write_metrics_csv(fold_dir / "metrics.csv", st["history"])
            save_checkpoint(last, model=model, optimizer=optimizer, scheduler=scheduler, config=cfg_dict,
                            epoch=epoch, extra={**extra_common, "state": st})
        progress.end_epoch(epoch, val_auc, st["best_epoch"])
        epoch += 1

    # final evaluation of the model selected on validation
    ctx.verify_in_sync(model, f"training fold {split.name}")  # DDP: identical parameters on every rank
    best = ctx.rank0_call(load_checkpoint, fold_dir / "best.pt")
    model.load_state_dict(best["model"])
    val = ctx.gather_predictions(evaluate(model, val_loader, device), len(ds["val"]))
    test_loader = _loader(ds["test"], cfg, ctx.eval_indices(len(ds["test"])))
    test = ctx.gather_predictions(evaluate(model, test_loader, device), len(ds["test"]))
    res = evaluate_fold(val.y, val.prob, test.y, test.prob)
    res["val"]["loss"] = val.loss
    res.update({"split": split.name, "repeat": split.repeat, "fold": split.fold, "best_epoch": best["epoch"],
                "epochs_run": st["next_epoch"], "early_stopped": bool(st["stopped"]),
                "n_train": len(ds["train"]), "n_val": len(ds["val"]), "n_test": len(ds["test"]),
                "train_seconds": float(sum(h.get("train_seconds", 0.0) for h in st["history"]))})
    if ctx.is_main:
        _write_predictions(fold_dir / "predictions.csv", {"val": val, "test": test}, cohort.classes)
        tmp = done.with_name("done.json.tmp")
        tmp.write_text(json.dumps(res, indent=2) + "\n")
        os.replace(tmp, done)
    return res


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

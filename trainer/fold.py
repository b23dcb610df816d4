"""One outer fold of ``samtrain fit``: train with early stopping on validation, test the selected model.

Files of a fold (``RUN/fold_r<R>_f<K>/``, see trainer/run.py)::

    metrics.csv      one row per epoch          last.pt   resumable state, rewritten atomically every epoch
    best.pt          best epoch on validation   predictions.csv, done.json   written by the final test

:func:`run_fold` reads as its steps: :func:`restore` (a finished fold's ``done.json``, else ``last.pt``),
:func:`train_epoch` until :class:`FoldState` says stop (each epoch ends with :func:`select`, the
early-stopping decision, and a checkpoint), then :func:`final_test`. :func:`run_outer_fold` runs every
``--search`` / ``--inits`` candidate as such a fold and keeps the best on validation.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from trainer.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from trainer.config import TrainConfig
from trainer.cohort import Cohort
from trainer.data import BagDataset, collate_one
from trainer.distributed import SINGLE, DistContext
from trainer.feature_stats import training_feature_stats
from trainer.loop import evaluate, train_one_epoch
from trainer.metrics import evaluate_fold, safe_auc
from trainer.models import build_model
from trainer.models.base import METRIC_TERMS
from trainer.report import NullProgress
from trainer.search import candidate_config, grid_points, init_budget, needs_reinit, pick, selection_key
from trainer.splits import Split

# metrics.csv header: the loss columns come from the models' METRIC_TERMS (trainer/models/base.py)
METRIC_FIELDS = ("epoch", "lr", "train_loss", *(f"train_{t}" for t in METRIC_TERMS), "val_loss", "val_auc",
                 "improved", "train_seconds")
PARTS = ("train", "val", "test")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def fold_seed(cfg: TrainConfig, split: Split, init: int = 0) -> int:
    return cfg.seed + 7919 * split.repeat + 104729 * split.fold + 1299709 * init


def make_loader(ds, cfg: TrainConfig, order=None, seed: int = 0) -> DataLoader:
    kw = {}
    if cfg.num_workers > 0:
        kw = {"multiprocessing_context": "fork", "persistent_workers": cfg.cache}
    # own generator: creating a loader iterator must not consume the global RNG (resume = same numbers)
    return DataLoader(ds, batch_size=1, sampler=order if order is not None else None, shuffle=False,
                      collate_fn=collate_one, num_workers=cfg.num_workers,
                      generator=torch.Generator().manual_seed(seed), **kw)


# --------------------------------------------------------------------------------------- fold files

def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_done(fold_dir: Path, cfg: TrainConfig, ctx: DistContext) -> dict | None:
    """The results of a finished fold (``done.json``) when resuming; None otherwise."""
    done = fold_dir / "done.json"
    return ctx.rank0_call(lambda: json.loads(done.read_text()) if done.exists() and cfg.resume else None)


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: row.get(k, "") for k in METRIC_FIELDS})
    os.replace(tmp, path)


def write_predictions(path: Path, parts: dict, classes: list[str]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "slide_id", "label", *[f"p_{c}" for c in classes]])
        for split, pr in parts.items():
            for sid, y, p in zip(pr.slide_ids, pr.y, pr.prob):
                w.writerow([split, sid, classes[int(y)], *[f"{v:.6g}" for v in p]])


# --------------------------------------------------------------------------------------- fold state

@dataclass
class FoldState:
    """Early-stopping state of a fold; saved in ``last.pt`` (``extra["state"]``, as a plain dict)."""

    next_epoch: int = 0
    best: list | None = None             # selection key of the best epoch so far (trainer/search.py)
    best_epoch: int = -1
    bad_epochs: int = 0                  # selectable epochs since the best one
    history: list[dict] = field(default_factory=list)   # one metrics.csv row per epoch
    stopped: bool = False                # early-stopped

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FoldState":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclass
class Fold:
    """What the steps of one fold share: settings, data, model, optimiser and where to write."""

    cfg: TrainConfig
    split: Split
    classes: list[str]
    in_dim: int
    device: torch.device
    dir: Path
    ctx: DistContext
    progress: object
    seed: int
    ds: dict                             # "train" / "val" / "test" -> BagDataset
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    val_loader: DataLoader | None = None
    train_model: torch.nn.Module | None = None   # the model, or its DDP wrapper

    @property
    def meta(self) -> dict:
        """``extra`` of every checkpoint: what predict needs to rebuild the model."""
        return {"classes": self.classes, "split": self.split.name, "in_dim": self.in_dim}

    def save(self, name: str, epoch: int, extra: dict, **kw) -> None:
        save_checkpoint(self.dir / name, model=self.model, optimizer=self.optimizer, config=self.cfg.to_dict(),
                        epoch=epoch, extra={**self.meta, **extra}, **kw)


def build_fold(cfg: TrainConfig, cohort: Cohort, split: Split, in_dim: int, device, fold_dir: Path, progress,
               ctx: DistContext, init: int) -> Fold:
    """Datasets, seeded model (standardised on the training part), optimiser and scheduler."""
    ds = {p: BagDataset(cfg.store, [cohort.slide_ids[i] for i in getattr(split, p)], cohort.y[getattr(split, p)],
                        cache=cfg.cache) for p in PARTS}
    seed = fold_seed(cfg, split, init)
    seed_everything(seed)
    model = build_model(cfg.model, in_dim, len(cohort.classes), cfg)
    if cfg.attn_init == "uniform":
        model.init_uniform_attention()
    if cfg.standardize:
        model.set_feature_stats(*training_feature_stats(cfg.store, [cohort.slide_ids[i] for i in split.train]))
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.max_epochs, eta_min=0.0)
                 if cfg.scheduler == "cosine" else None)
    return Fold(cfg, split, cohort.classes, in_dim, device, fold_dir, ctx, progress, seed, ds, model, optimizer,
                scheduler)


# ---------------------------------------------------------------------------------------- the steps

def restore(f: Fold) -> FoldState:
    """Continue from ``last.pt`` (model, optimiser, scheduler, state, RNG) when resuming; else a new state."""
    last = f.dir / "last.pt"
    ck = f.ctx.rank0_call(lambda: load_checkpoint(last) if last.exists() and f.cfg.resume else None)
    if ck is None:
        return FoldState()
    f.model.load_state_dict(ck["model"])
    f.optimizer.load_state_dict(ck["optimizer"])
    if f.scheduler is not None and "scheduler" in ck:
        f.scheduler.load_state_dict(ck["scheduler"])
    set_rng_state(ck["rng"])
    return FoldState.from_dict(ck["extra"]["state"])


def train_epoch(f: Fold, st: FoldState) -> None:
    """Train epoch ``st.next_epoch``, validate, :func:`select`, write metrics.csv and ``last.pt``."""
    cfg, ctx, epoch = f.cfg, f.ctx, st.next_epoch
    order = torch.randperm(len(f.ds["train"]), generator=torch.Generator().manual_seed(f.seed * 1000 + epoch))
    tr_loader = make_loader(f.ds["train"], cfg, ctx.train_sampler(order.tolist()), f.seed + epoch)
    f.model.set_epoch(epoch)
    tr = train_one_epoch(f.train_model, tr_loader, f.optimizer, f.device, accumulate=ctx.accumulate(cfg.batch_size),
                         on_step=f.progress.step)
    tr = ctx.reduce_train_stats(tr, len(tr_loader))
    lr = f.optimizer.param_groups[0]["lr"]
    if f.scheduler is not None:
        f.scheduler.step()
    val = ctx.gather_predictions(evaluate(f.model, f.val_loader, f.device), len(f.ds["val"]))
    val_auc = safe_auc(val.y, val.prob)
    improved = select(f, st, epoch, val_auc, val.loss)
    st.history.append({"epoch": epoch, "lr": lr, **tr, "val_loss": val.loss, "val_auc": val_auc,
                       "improved": int(improved)})
    st.stopped = st.bad_epochs >= cfg.patience and epoch + 1 >= cfg.min_epochs
    st.next_epoch = epoch + 1
    if ctx.is_main:
        write_metrics_csv(f.dir / "metrics.csv", st.history)
        f.save("last.pt", epoch, {"state": st.to_dict()}, scheduler=f.scheduler)
    f.progress.end_epoch(epoch, val_auc, st.best_epoch)


def select(f: Fold, st: FoldState, epoch: int, val_auc: float, val_loss: float) -> bool:
    """Early-stopping bookkeeping; writes ``best.pt`` when the epoch is the best so far. Returns improved.

    Epochs before ``min_epochs`` are never selected (epoch 0's validation AUC often saturates by chance)
    and never count for patience; the last epoch is always selectable.
    """
    score = selection_key(val_auc, val_loss, f.cfg.monitor)   # higher is better
    selectable = epoch >= f.cfg.min_epochs or epoch + 1 == f.cfg.max_epochs
    improved = selectable and (st.best is None or tuple(score) > tuple(st.best))
    if improved:
        st.best, st.best_epoch, st.bad_epochs = list(score), epoch, 0
        if f.ctx.is_main:
            f.save("best.pt", epoch, {"val_auc": val_auc, "val_loss": val_loss}, with_rng=False)
    elif selectable:
        st.bad_epochs += 1
    return improved


def final_test(f: Fold, st: FoldState) -> dict:
    """Reload ``best.pt``; score validation and test; write predictions.csv and done.json."""
    ctx, split = f.ctx, f.split
    ctx.verify_in_sync(f.model, f"training fold {split.name}")  # DDP: identical parameters on every rank
    best = ctx.rank0_call(load_checkpoint, f.dir / "best.pt")
    f.model.load_state_dict(best["model"])
    val = ctx.gather_predictions(evaluate(f.model, f.val_loader, f.device), len(f.ds["val"]))
    test_loader = make_loader(f.ds["test"], f.cfg, ctx.eval_indices(len(f.ds["test"])))
    test = ctx.gather_predictions(evaluate(f.model, test_loader, f.device), len(f.ds["test"]))
    res = evaluate_fold(val.y, val.prob, test.y, test.prob)
    res["val"]["loss"] = val.loss
    res.update({"split": split.name, "repeat": split.repeat, "fold": split.fold, "best_epoch": best["epoch"],
                "epochs_run": st.next_epoch, "early_stopped": bool(st.stopped),
                **{f"n_{p}": len(f.ds[p]) for p in PARTS},
                "train_seconds": float(sum(h.get("train_seconds", 0.0) for h in st.history))})
    if ctx.is_main:
        write_predictions(f.dir / "predictions.csv", {"val": val, "test": test}, f.classes)
        write_json_atomic(f.dir / "done.json", res)
    return res


def run_fold(cfg: TrainConfig, cohort: Cohort, split: Split, in_dim: int, device, fold_dir: Path,
             progress=None, ctx: DistContext = SINGLE, init: int = 0) -> dict:
    """Train one fold with early stopping on validation; evaluate the best model on test.

    Under torchrun (``ctx``, see trainer/distributed.py) ranks share the training bags and the evaluation,
    and only rank 0 writes files.
    """
    fold_dir.mkdir(parents=True, exist_ok=True)
    finished = read_done(fold_dir, cfg, ctx)
    if finished is not None:
        return finished
    f = build_fold(cfg, cohort, split, in_dim, device, fold_dir, progress or NullProgress(), ctx, init)
    st = restore(f)
    f.val_loader = make_loader(f.ds["val"], cfg, ctx.eval_indices(len(f.ds["val"])))
    f.train_model = ctx.wrap(f.model)  # DDP under torchrun (broadcasts rank 0's parameters)
    f.progress.start_fold(split.name, cfg.max_epochs, st.next_epoch, len(f.ds["train"]))
    while st.next_epoch < cfg.max_epochs and not st.stopped:
        train_epoch(f, st)
    return final_test(f, st)


def run_outer_fold(cfg: TrainConfig, cohort: Cohort, split: Split, in_dim: int, device, fold_dir: Path,
                   progress=None, ctx: DistContext = SINGLE) -> dict:
    """One outer fold: :func:`run_fold` directly, or every ``--search`` / ``--inits`` candidate in
    ``fold_dir/cand_<i>`` and the one with the best validation score (trainer/search.py).

    With ``--reinit-below A`` (default 0: off), a setting whose initialisations all end below validation AUC
    ``A`` gets another one, up to ``--max-inits``: a fold that trained well keeps its single model in
    ``fold_dir`` as before, a failed start is moved to ``cand_00`` and the next ones follow it. Only
    validation decides; the test fold is scored once per candidate and never compared.

    The chosen candidate's ``best.pt``, ``metrics.csv`` and ``predictions.csv`` are copied into
    ``fold_dir`` so that predict, heatmap and the report see one model per fold.
    """
    low, high = init_budget(cfg)
    if not cfg.search and low == 1 and not (fold_dir / "cand_00").exists():
        res = run_fold(cfg, cohort, split, in_dim, device, fold_dir, progress, ctx)
        if high == 1 or "search" in res or not needs_reinit([res], cfg.reinit_below):
            return res
        if ctx.is_main:
            _move_into_candidate(fold_dir, fold_dir / "cand_00")
        ctx.barrier()
    finished = read_done(fold_dir, cfg, ctx)
    if finished is not None:
        return finished
    cands, results = [], []
    for params in grid_points(cfg.search):
        mine = []
        while len(mine) < low or (len(mine) < high and needs_reinit(mine, cfg.reinit_below)):
            cand = {"params": params, "init": len(mine)}
            mine.append(run_fold(candidate_config(cfg, cand), cohort, split, in_dim, device,
                                 fold_dir / f"cand_{len(cands):02d}", progress, ctx, init=cand["init"]))
            cands.append(cand)
        results += mine
    k = pick(results, cfg.monitor)
    res = dict(results[k])
    res["search"] = {"chosen": k, "chosen_params": cands[k]["params"], "chosen_init": cands[k]["init"],
                     "candidates": [{"params": c["params"], "init": c["init"], "val_auc": r["val"].get("auc"),
                                     "val_loss": r["val"].get("loss"), "best_epoch": r["best_epoch"]}
                                    for c, r in zip(cands, results)],
                     "note": "chosen on the validation split of the training part; test never used"}
    if high > low:
        res["search"]["reinit_below"] = cfg.reinit_below
    if ctx.is_main:
        for name in ("best.pt", "metrics.csv", "predictions.csv"):
            shutil.copy2(fold_dir / f"cand_{k:02d}" / name, fold_dir / name)
        write_json_atomic(fold_dir / "done.json", res)
    return res


def _move_into_candidate(fold_dir: Path, cand_dir: Path) -> None:
    """Move a finished single-model fold into ``cand_dir`` (its files, then the folder's name), so that a
    crash at any point leaves either the fold as it was or the candidate complete."""
    tmp = cand_dir.with_name(cand_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    names = sorted(p.name for p in fold_dir.iterdir() if p.is_file())
    for name in sorted(names, key=lambda n: n == "done.json"):        # done.json last
        shutil.copy2(fold_dir / name, tmp / name)
    os.replace(tmp, cand_dir)
    for name in names:
        (fold_dir / name).unlink()

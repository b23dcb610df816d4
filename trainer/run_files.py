"""Read back what ``samtrain fit`` wrote into a run directory (see trainer/run.py for the layout).

Used by the run report, ``samtrain compare`` and the pooled-AUC interval; numpy only, so the CLI starts fast.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clam2sam.errors import UsageError


def load_results(run: str | Path) -> dict:
    """``RUN/results.json`` of a finished run; a clear error when it is not one."""
    run = Path(run)
    p = run / "results.json"
    if not run.is_dir():
        raise UsageError("not a directory", path=run, fix="give the --out directory of a `samtrain fit` run")
    if not p.is_file():
        hint = ("the run has not finished: re-run its `samtrain fit` command to complete it"
                if (run / "config.json").is_file() else "give the --out directory of a `samtrain fit` run")
        raise UsageError("no results.json", path=run, fix=hint)
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"unreadable results.json ({e})", path=p,
                         fix="re-run the run's `samtrain fit` command to rewrite it") from e


def load_splits(run: str | Path) -> list[dict]:
    """``RUN/splits.json``: one ``{name, repeat, fold, train, val, test}`` per fold."""
    p = Path(run) / "splits.json"
    if not p.is_file():
        raise UsageError("no splits.json", path=Path(run), fix="re-run the run's `samtrain fit` command")
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"unreadable splits.json ({e})", path=p, fix="re-run the run's `samtrain fit` command") from e


def fold_dir(run: str | Path, fold: dict) -> Path:
    return Path(run) / f"fold_{fold['split']}"


def read_metrics(path: str | Path) -> dict[str, np.ndarray]:
    """``metrics.csv`` as columns of floats (empty cells -> NaN); ``{}`` when the file is missing."""
    path = Path(path)
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}

    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    return {k: np.array([num(r.get(k)) for r in rows]) for k in rows[0]}


@dataclass
class Predictions:
    """Slide predictions of one part (val or test) of one or more folds.

    ``y``: ``(n,)`` class indices; ``prob``: ``(n, C)``; ``fold``: ``(n,)`` index into the run's folds.
    """
    slide_ids: np.ndarray
    y: np.ndarray
    prob: np.ndarray
    fold: np.ndarray

    @property
    def score(self) -> np.ndarray:
        """``(n,)`` positive-class probability of a binary task."""
        return self.prob[:, 1]


def read_predictions(path: str | Path, classes: list[str], part: str = "test", fold_index: int = 0) -> Predictions:
    """Rows of ``part`` from a fold's ``predictions.csv`` (columns split, slide_id, label, p_<class>...)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError("no predictions.csv", path=path.parent,
                         fix="the fold has not finished: re-run the run's `samtrain fit` command")
    cols = [f"p_{c}" for c in classes]
    ids, ys, probs = [], [], []
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            if r.get("split") != part:
                continue
            if r["label"] not in classes:
                raise UsageError(f"label {r['label']!r} is not one of the run's classes {classes}",
                                 slide=r.get("slide_id"), path=path, fix="the run directory is inconsistent; "
                                 "re-run the fit with --overwrite")
            ids.append(r["slide_id"])
            ys.append(classes.index(r["label"]))
            probs.append([float(r[c]) for c in cols])
    C = len(classes)
    return Predictions(np.asarray(ids, dtype=object), np.asarray(ys, dtype=np.int64),
                       np.asarray(probs, dtype=np.float64).reshape(-1, C), np.full(len(ids), fold_index))


def pooled_predictions(run: str | Path, results: dict, part: str = "test") -> Predictions:
    """``part`` predictions of every fold of the run, concatenated (fold order of ``results['folds']``)."""
    classes = results["classes"]
    parts = [read_predictions(fold_dir(run, f) / "predictions.csv", classes, part, i)
             for i, f in enumerate(results["folds"])]
    C = len(classes)
    if not parts:
        return Predictions(np.empty(0, object), np.empty(0, np.int64), np.empty((0, C)), np.empty(0, np.int64))
    return Predictions(np.concatenate([p.slide_ids for p in parts]), np.concatenate([p.y for p in parts]),
                       np.concatenate([p.prob for p in parts]), np.concatenate([p.fold for p in parts]))


def pooled_test_auc(run: str | Path, results: dict, n_boot: int | None = None, seed: int = 0) -> dict:
    """Pooled test AUC of a run with its bootstrap 95 % interval over slides (trainer/bootstrap.py)."""
    from trainer.bootstrap import DEFAULT_BOOT, auc_ci

    p = pooled_predictions(run, results, "test")
    return auc_ci(p.y, p.prob, groups=p.slide_ids.astype(str), n_boot=n_boot or DEFAULT_BOOT, seed=seed)


def fold_flags(fold: dict) -> str:
    """The degenerate-fold flags a run recorded for a fold (``fold['flags']``), as text; '' when none."""
    fl = fold.get("flags")
    if not fl:
        return ""
    if isinstance(fl, dict):
        return ", ".join(k if v is True else f"{k}: {v}" for k, v in fl.items() if v not in (False, None, 0, ""))
    if isinstance(fl, (list, tuple)):
        return ", ".join(str(x) for x in fl)
    return str(fl)


def pooled_test_auc_or_nan(run: str | Path, results: dict) -> dict:
    """``pooled_test_auc`` for the end of ``fit``: an unreadable fold file gives NaNs and a warning, not a crash."""
    import sys

    from clam2sam.errors import Clam2SamError

    try:
        return pooled_test_auc(run, results)
    except (Clam2SamError, OSError, ValueError, KeyError) as e:
        sys.stderr.write(f"warning: pooled test AUC not computed ({e})\n")
        nan = float("nan")
        return {"auc": nan, "lo": nan, "hi": nan, "level": 0.95, "error": str(e)}

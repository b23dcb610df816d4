"""ROC and precision-recall curves under row weights, and their pointwise bootstrap bands (numpy only).

The bands resample slides exactly as the pooled-AUC interval does (trainer/bootstrap.py), then read each
resample's curve on a fixed grid: TPR at each FPR, and interpolated precision (the best precision at a
recall at least as high) at each recall.
"""
from __future__ import annotations

import numpy as np

from trainer.bootstrap import slide_resample_weights

GRID = np.linspace(0.0, 1.0, 101)


def weighted_curve_points(score: np.ndarray, pos: np.ndarray, w: np.ndarray | None = None):
    """Cumulative positive / negative weight above each distinct threshold, from the highest score down.

    Returns:
        ``(tp, fp)`` each ``(n_thresholds + 1,)`` starting at 0.
    """
    w = np.ones(len(score)) if w is None else np.asarray(w, dtype=np.float64)
    order = np.argsort(-score, kind="stable")
    s, p, w = score[order], pos[order], w[order]
    last = np.r_[s[1:] != s[:-1], True]  # last row of each tie group
    tp = np.r_[0.0, np.cumsum(np.where(p, w, 0.0))[last]]
    fp = np.r_[0.0, np.cumsum(np.where(p, 0.0, w))[last]]
    return tp, fp


def roc_points(score, pos, w=None):
    """``(fpr, tpr)`` of the ROC curve (NaN arrays when a class is missing)."""
    tp, fp = weighted_curve_points(np.asarray(score, float), np.asarray(pos, bool), w)
    if tp[-1] <= 0 or fp[-1] <= 0:
        return np.array([np.nan]), np.array([np.nan])
    return fp / fp[-1], tp / tp[-1]


def pr_points(score, pos, w=None):
    """``(recall, precision)`` of the precision-recall curve, starting at recall 0 with precision 1."""
    tp, fp = weighted_curve_points(np.asarray(score, float), np.asarray(pos, bool), w)
    if tp[-1] <= 0:
        return np.array([np.nan]), np.array([np.nan])
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1.0), 1.0)
    return tp / tp[-1], prec


def tpr_on_grid(fpr, tpr, grid=GRID):
    return np.interp(grid, fpr, tpr)


def precision_on_grid(recall, precision, grid=GRID):
    """Interpolated precision: the highest precision at any recall >= each grid value."""
    env = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.minimum(np.searchsorted(recall, grid, side="left"), len(recall) - 1)
    return env[idx]


def curve_bands(score, pos, y, groups=None, n_boot: int = 500, seed: int = 0, level: float = 0.95) -> dict:
    """Pointwise bootstrap bands of the ROC (TPR at ``GRID`` FPR) and PR (precision at ``GRID`` recall).

    Args:
        score: ``(n,)`` scores; pos: ``(n,)`` bool positives; y: ``(n,)`` class index (stratification);
        groups: ``(n,)`` slide id per row (rows of one slide resampled together).

    Returns:
        ``{"grid", "tpr_lo", "tpr_hi", "prec_lo", "prec_hi"}`` (``(len(GRID),)`` arrays).
    """
    score = np.asarray(score, float)
    pos = np.asarray(pos, bool)
    rng = np.random.default_rng(seed)
    W = slide_resample_weights(np.asarray(y), groups, n_boot, rng)
    tprs, precs = [], []
    for w in W:
        fpr, tpr = roc_points(score, pos, w)
        if np.isfinite(fpr).all():
            tprs.append(tpr_on_grid(fpr, tpr))
        rec, prec = pr_points(score, pos, w)
        if np.isfinite(rec).all():
            precs.append(precision_on_grid(rec, prec))
    a = (1.0 - level) / 2.0
    out = {"grid": GRID}
    for key, rows in (("tpr", tprs), ("prec", precs)):
        if rows:
            lo, hi = np.quantile(np.asarray(rows), [a, 1.0 - a], axis=0)
        else:
            lo = hi = np.full(len(GRID), np.nan)
        out[f"{key}_lo"], out[f"{key}_hi"] = lo, hi
    return out

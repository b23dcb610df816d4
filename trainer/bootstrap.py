"""Bootstrap intervals: the pooled AUC of a run, and paired differences between runs.

Pooled AUC: all test predictions of a run (every fold, every repeat) scored together. The bootstrap
resamples *slides* (a slide tested in R repeats carries its R rows), stratified by class as pROC does, so
every resample holds every class and the interval never mixes in undefined AUCs. Each resample is a
weight vector on the rows; the weighted AUC is computed exactly (ties count 1/2, as ``roc_auc_score``)
from one sort, for many resamples at once.

Paired differences: one value per (repeat, fold) for each run; the interval is the percentile bootstrap
of the mean paired difference over the folds x repeats. Identical runs give exactly 0 (resampled means
are ``counts @ d / n`` with ``d`` all zero).
"""
from __future__ import annotations

import numpy as np

DEFAULT_BOOT = 2000
_CHUNK_CELLS = 4_000_000  # resamples x rows held at once (~32 MB of float64)


def _as_scores(y: np.ndarray, prob: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(score, positive mask) pairs: one for a binary task, one per class (one-vs-rest) otherwise."""
    prob = np.asarray(prob, dtype=np.float64)
    y = np.asarray(y)
    if prob.ndim == 1:
        return [(prob, y == 1)]
    if prob.shape[1] == 2:
        return [(prob[:, 1], y == 1)]
    return [(prob[:, k], y == k) for k in range(prob.shape[1])]


def weighted_auc(score: np.ndarray, pos: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ROC AUC of ``score`` for the positives ``pos`` under row weights.

    Args:
        score: ``(n,)`` scores (higher = more positive).
        pos: ``(n,)`` bool, the positive rows.
        w: ``(B, n)`` non-negative weights (a row of ones gives the ordinary AUC).

    Returns:
        ``(B,)`` AUCs; NaN where a resample has no positive or no negative weight.
    """
    order = np.argsort(score, kind="stable")
    s, p = score[order], pos[order]
    w = np.atleast_2d(w)[:, order]
    n = len(s)
    # first / last sorted position of each row's tie group
    new = np.r_[True, s[1:] != s[:-1]]
    start = np.maximum.accumulate(np.where(new, np.arange(n), 0))
    end_of_group = np.r_[np.flatnonzero(new)[1:] - 1, n - 1]
    end = end_of_group[np.cumsum(new) - 1]
    wneg = np.where(p, 0.0, w)
    wpos = np.where(p, w, 0.0)
    cneg = np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(wneg, axis=1)], axis=1)  # (B, n+1)
    below = cneg[:, start]                       # negative weight strictly below each row's score
    equal = cneg[:, end + 1] - below             # negative weight tied with it
    num = (wpos * (below + 0.5 * equal)).sum(axis=1)
    den = wpos.sum(axis=1) * wneg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def auc_of(y: np.ndarray, prob: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """AUC (binary) or macro one-vs-rest AUC (multi-class) under weights ``w`` ``(B, n)`` (default: ones)."""
    y = np.asarray(y)
    w = np.ones((1, len(y))) if w is None else np.atleast_2d(w)
    per_class = [weighted_auc(s, pos, w) for s, pos in _as_scores(y, prob)]
    return np.mean(per_class, axis=0)


def slide_resample_weights(y: np.ndarray, groups: np.ndarray | None, n_boot: int,
                           rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, n)`` row weights of a class-stratified bootstrap over slides (``groups``: slide id per row)."""
    y = np.asarray(y)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    uniq, unit = np.unique(groups, return_inverse=True)
    unit_class = np.empty(len(uniq), dtype=y.dtype)
    unit_class[unit] = y  # one class per slide
    counts = np.zeros((n_boot, len(uniq)))
    for c in np.unique(unit_class):
        members = np.flatnonzero(unit_class == c)
        m = len(members)
        counts[:, members] = rng.multinomial(m, np.full(m, 1.0 / m), size=n_boot)
    return counts[:, unit]


def auc_ci(y: np.ndarray, prob: np.ndarray, groups: np.ndarray | None = None, n_boot: int = DEFAULT_BOOT,
           seed: int = 0, level: float = 0.95) -> dict:
    """Pooled AUC with a percentile bootstrap interval over slides, stratified by class.

    Args:
        y: ``(n,)`` class indices.
        prob: ``(n,)`` positive-class scores, or ``(n, C)`` class probabilities.
        groups: ``(n,)`` slide id per row (rows of one slide are resampled together); None: rows independent.

    Returns:
        ``{"auc", "lo", "hi", "level", "n_boot", "n_rows", "n_slides", "method"}``; NaNs when a class is absent.
    """
    y = np.asarray(y)
    n_slides = len(np.unique(groups)) if groups is not None else len(y)
    out = {"auc": float("nan"), "lo": float("nan"), "hi": float("nan"), "level": level, "n_boot": int(n_boot),
           "n_rows": int(len(y)), "n_slides": int(n_slides),
           "method": "percentile bootstrap over slides, stratified by class"}
    if len(np.unique(y)) < 2:
        return out
    out["auc"] = float(auc_of(y, prob)[0])
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK_CELLS // max(1, len(y)))
    boots = []
    for b0 in range(0, n_boot, step):
        w = slide_resample_weights(y, groups, min(step, n_boot - b0), rng)
        boots.append(auc_of(y, prob, w))
    boots = np.concatenate(boots)
    boots = boots[np.isfinite(boots)]
    if len(boots):
        a = (1.0 - level) / 2.0
        out["lo"], out["hi"] = (float(v) for v in np.quantile(boots, [a, 1.0 - a]))
    return out


def paired_diff_ci(a, b, n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of the paired differences ``a - b`` with a percentile bootstrap interval, and the paired sign.

    Args:
        a, b: per (repeat, fold) values of two runs, in the same order; pairs with a NaN are left out.

    Returns:
        ``{"mean_a", "mean_b", "mean_diff", "lo", "hi", "level", "n", "n_dropped", "wins", "losses", "ties"}``;
        ``wins`` counts pairs where ``a > b``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values of different lengths: {a.shape} vs {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    n = len(d)
    nan = float("nan")
    out = {"mean_a": float(a[ok].mean()) if n else nan, "mean_b": float(b[ok].mean()) if n else nan,
           "mean_diff": float(d.mean()) if n else nan, "lo": nan, "hi": nan, "level": level, "n": int(n),
           "n_dropped": int((~ok).sum()), "wins": int((d > 0).sum()), "losses": int((d < 0).sum()),
           "ties": int((d == 0).sum()), "n_boot": int(n_boot)}
    if n == 0:
        return out
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)  # (B, n)
    means = counts @ d / n  # (B,)
    al = (1.0 - level) / 2.0
    out["lo"], out["hi"] = (float(v) for v in np.quantile(means, [al, 1.0 - al]))
    return out


def paired_auc_diff_ci(y: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray, groups: np.ndarray | None = None,
                       n_boot: int = DEFAULT_BOOT, seed: int = 0, level: float = 0.95) -> dict:
    """Difference of two models' pooled AUCs on the same rows, with a paired bootstrap interval.

    Both models are scored on every resample of the slides (the same weights), so the interval reflects
    only how differently they rank the same slides.

    Returns:
        ``{"auc_a", "auc_b", "mean_diff", "lo", "hi", "level", "n_boot", "n_rows", "n_slides"}``.
    """
    y = np.asarray(y)
    nan = float("nan")
    out = {"auc_a": nan, "auc_b": nan, "mean_diff": nan, "lo": nan, "hi": nan, "level": level,
           "n_boot": int(n_boot), "n_rows": int(len(y)),
           "n_slides": int(len(np.unique(groups)) if groups is not None else len(y))}
    if len(np.unique(y)) < 2:
        return out
    a, b = auc_of(y, prob_a)[0], auc_of(y, prob_b)[0]
    out.update(auc_a=float(a), auc_b=float(b), mean_diff=float(a - b))
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK_CELLS // max(1, len(y)))
    diffs = []
    for b0 in range(0, n_boot, step):
        w = slide_resample_weights(y, groups, min(step, n_boot - b0), rng)
        diffs.append(auc_of(y, prob_a, w) - auc_of(y, prob_b, w))
    diffs = np.concatenate(diffs)
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs):
        al = (1.0 - level) / 2.0
        out["lo"], out["hi"] = (float(v) for v in np.quantile(diffs, [al, 1.0 - al]))
    return out

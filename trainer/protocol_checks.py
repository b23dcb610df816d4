"""Checks that say when a cross-validation result should not be trusted as it stands.

Per fold (``fold["flags"]``, a list of short codes with an explanation in ``FLAG_TEXT``):

* ``early-epoch``: the selected epoch is < 2 (the model barely trained; often a validation AUC that
  saturated by chance on a small split);
* ``val-auc<=0.5``: the selected model does no better than chance on its own validation split;
* ``test-outlier``: the fold's test AUC lies far below the other folds (more than
  ``max(0.2, 3 x IQR)`` under their median);
* ``collapsed``: test AUC below 0.6 while the median of the folds is above 0.85.

Run-level warnings (``results["warnings"]``): validation splits with fewer than 10 slides of a class,
splits made by slide because the store has no case ids, and which monitor selected the epochs.
"""
from __future__ import annotations

import math

import numpy as np

FLAG_TEXT = {
    "early-epoch": "selected epoch < 2",
    "val-auc<=0.5": "validation AUC <= 0.5",
    "test-outlier": "test AUC far below the other folds",
    "collapsed": "test AUC < 0.6 while the median fold is > 0.85",
}
MIN_VAL_PER_CLASS = 10


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def fold_flags(folds: list[dict]) -> list[list[str]]:
    """Flags for every fold (same order)."""
    aucs = [f["test"].get("auc") for f in folds]
    finite = np.asarray([a for a in aucs if _finite(a)], dtype=np.float64)
    med = float(np.median(finite)) if len(finite) else float("nan")
    out = []
    for i, f in enumerate(folds):
        flags = []
        if f.get("best_epoch", 99) < 2:
            flags.append("early-epoch")
        va = f["val"].get("auc")
        if _finite(va) and va <= 0.5:
            flags.append("val-auc<=0.5")
        a = aucs[i]
        others = np.asarray([x for j, x in enumerate(aucs) if j != i and _finite(x)], dtype=np.float64)
        if _finite(a) and len(others) >= 2:
            q1, q3 = np.percentile(others, [25, 75])
            if a < float(np.median(others)) - max(0.2, 3.0 * float(q3 - q1)):
                flags.append("test-outlier")
        if _finite(a) and a < 0.6 and med > 0.85:
            flags.append("collapsed")
        out.append(flags)
    return out


def median_iqr(values) -> dict:
    v = np.asarray([x for x in values if _finite(x)], dtype=np.float64)
    if not len(v):
        return {"median": float("nan"), "q1": float("nan"), "q3": float("nan")}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3)}


def run_warnings(splits, y: np.ndarray, slide_ids: list[str], case_ids: list[str], monitor: str,
                 n_classes: int) -> list[str]:
    """Warnings about the protocol itself (small validation splits, splits by slide, the monitor)."""
    warns = []
    small = []
    for s in splits:
        counts = np.bincount(np.asarray(y)[s.val], minlength=n_classes)
        if counts.min() < MIN_VAL_PER_CLASS:
            small.append(f"{s.name} ({'/'.join(str(int(c)) for c in counts)})")
    if small:
        warns.append(f"{len(small)} of {len(splits)} validation splits hold fewer than {MIN_VAL_PER_CLASS} slides "
                     f"of a class: {', '.join(small[:6])}{' ...' if len(small) > 6 else ''}. Their AUC moves in "
                     "large steps and saturates easily; epoch and setting selection is noisy there "
                     "(a larger --val-frac or cohort helps).")
    if list(case_ids) == list(slide_ids):
        warns.append("splits are by slide: the store has no case ids, so a patient with several slides could "
                     "fall into both training and test. Give case ids (--labels CSV with a case_id column, or "
                     "convert with a dataset CSV that has one) when patients have several slides.")
    warns.append(f"epochs (and --search settings) selected on validation by "
                 f"{'AUC, ties broken by lower loss' if monitor == 'auc' else 'loss'} (--monitor {monitor}).")
    return warns

"""Slide-level metrics. The decision threshold is chosen on VALIDATION predictions only.

Binary tasks: scores are ``p(class 1)``; a slide is positive when ``p >= threshold``. The threshold is
Youden's J optimum (max TPR - FPR) on the validation set. The "optimistic" figures re-pick the threshold
on the test fold itself, as the reference code does; they are reported only for comparison with
published numbers and are labelled so everywhere.
Multi-class tasks: argmax predictions, macro one-vs-rest AUC, macro F1; no threshold.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score, roc_curve


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Threshold maximising TPR - FPR (ties: the highest threshold); 0.5 when one class is absent."""
    y, p = np.asarray(y), np.asarray(p, dtype=np.float64)
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, p, pos_label=1)
    thr = np.minimum(thr, 1.0)  # sklearn puts +inf (or max+1) first
    j = tpr - fpr
    return float(thr[int(np.argmax(j))])


def safe_auc(y: np.ndarray, prob: np.ndarray) -> float:
    """ROC AUC (binary: on ``prob[:, 1]``; multi-class: macro OvR); NaN when a class is missing."""
    y = np.asarray(y)
    prob = np.asarray(prob, dtype=np.float64)
    if len(np.unique(y)) < 2:
        return float("nan")
    if prob.shape[1] == 2:
        return float(roc_auc_score(y, prob[:, 1]))
    try:
        return float(roc_auc_score(y, prob, multi_class="ovr", average="macro", labels=np.arange(prob.shape[1])))
    except ValueError:
        return float("nan")


def threshold_metrics(y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict:
    avg = "binary" if n_classes == 2 else "macro"
    return {"acc": float(accuracy_score(y, pred)),
            "f1": float(f1_score(y, pred, average=avg, zero_division=0)),
            "bal_acc": float(balanced_accuracy_score(y, pred)) if len(np.unique(y)) > 1 else float("nan")}


def evaluate_fold(y_val: np.ndarray, prob_val: np.ndarray, y_test: np.ndarray, prob_test: np.ndarray) -> dict:
    """Test metrics at the validation threshold, plus the labelled optimistic test-threshold figures.

    Args:
        y_val, y_test: ``(n,)`` class indices.
        prob_val, prob_test: ``(n, C)`` class probabilities.

    Returns:
        ``{"val": {auc, threshold}, "test": {auc, acc, f1, bal_acc, threshold},
        "test_optimistic": {threshold, acc, f1, bal_acc, note}}`` (optimistic only for binary tasks).
    """
    C = prob_test.shape[1]
    res = {"val": {"auc": safe_auc(y_val, prob_val)}}
    if C == 2:
        thr = youden_threshold(y_val, prob_val[:, 1])
        pred = (prob_test[:, 1] >= thr).astype(np.int64)
        res["val"]["threshold"] = thr
        res["test"] = {"auc": safe_auc(y_test, prob_test), **threshold_metrics(y_test, pred, C), "threshold": thr}
        t_opt = youden_threshold(y_test, prob_test[:, 1])
        pred_opt = (prob_test[:, 1] >= t_opt).astype(np.int64)
        res["test_optimistic"] = {"threshold": t_opt, **threshold_metrics(y_test, pred_opt, C),
                                  "note": "threshold chosen on the test fold itself (optimistic; "
                                          "for comparison with published numbers only)"}
    else:
        pred = prob_test.argmax(1)
        res["test"] = {"auc": safe_auc(y_test, prob_test), **threshold_metrics(y_test, pred, C), "threshold": None}
    return res


def mean_std(values: list[float]) -> dict:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not len(v):
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}

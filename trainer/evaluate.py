"""``samtrain eval``: predict on a labelled store and score the predictions.

Writes everything ``predict`` writes, plus::

    OUT/metrics.json          auc, acc, f1, bal_acc (at the run's validation threshold), threshold,
                              confusion matrix (rows = true class, columns = predicted), class counts
    OUT/confusion_matrix.csv  the same matrix with class names
    OUT/roc.png               ROC curve (binary: the positive class; multi-class: one-vs-rest per class)

Slides without a label are predicted but not scored (their number is reported).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, roc_curve

from clam2sam.errors import UsageError
from trainer.metrics import safe_auc, threshold_metrics
from trainer.predict import load_ensemble, run_predict


def score_predictions(rows: list[dict], classes: list[str], threshold: float | None) -> dict:
    """Metrics of predicted rows (``label`` strings, ``prob`` (C,), ``pred`` index)."""
    lab = [r for r in rows if r["label"] is not None]
    unknown = sorted({r["label"] for r in lab} - set(classes))
    if unknown:
        raise UsageError(f"labels {unknown} are not classes of the model {classes}",
                         fix="pass --labels with the class names the model was trained on")
    if not lab:
        raise UsageError("no slide has a label", fix="pass --labels CSV with columns slide_id,label")
    y = np.array([classes.index(r["label"]) for r in lab])
    prob = np.stack([r["prob"] for r in lab])                 # (n, C)
    pred = np.array([r["pred"] for r in lab])
    C = len(classes)
    res = {"n_slides": len(lab), "n_unlabelled": len(rows) - len(lab),
           "class_counts": {c: int((y == i).sum()) for i, c in enumerate(classes)},
           "auc": safe_auc(y, prob), **threshold_metrics(y, pred, C),
           "threshold": threshold, "decision": "validation threshold" if threshold is not None else "argmax",
           "classes": classes,
           "confusion_matrix": confusion_matrix(y, pred, labels=list(range(C))).tolist()}
    return res


def plot_roc(rows: list[dict], classes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lab = [r for r in rows if r["label"] is not None]
    y = np.array([classes.index(r["label"]) for r in lab])
    prob = np.stack([r["prob"] for r in lab])
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ks = [1] if len(classes) == 2 else range(len(classes))
    for k in ks:
        if len(np.unique(y == k)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y == k, prob[:, k])
        auc = safe_auc((y == k).astype(int), np.stack([1 - prob[:, k], prob[:, k]], 1))
        ax.plot(fpr, tpr, lw=2, label=f"{classes[k]} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_eval(source: str | Path, store: str | Path, out: str | Path, *, labels: str | None = None,
             slides: list[str] | None = None, patch_probs: bool = False, device: str = "cpu",
             quiet: bool = False) -> dict:
    """Predict, then score; returns the metrics dict also written to ``OUT/metrics.json``."""
    out = Path(out)
    rows = run_predict(source, store, out, labels=labels, slides=slides, patch_probs=patch_probs, device=device,
                       quiet=quiet)
    ens = load_ensemble(source, device)
    res = score_predictions(rows, ens.classes, ens.threshold)
    res.update({"model": ens.cfg.model, "group_features": bool(ens.cfg.group_features),
                "members": [m.name for m in ens.members], "source": str(source), "store": str(store)})
    (out / "metrics.json").write_text(json.dumps(res, indent=2) + "\n")
    with (out / "confusion_matrix.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *ens.classes])
        for c, row in zip(ens.classes, res["confusion_matrix"]):
            w.writerow([c, *row])
    plot_roc(rows, ens.classes, out / "roc.png",
             f"{ens.cfg.model}{' + group features' if ens.cfg.group_features else ''}")
    return res


def metrics_table(res: dict) -> str:
    """A short readable summary (stderr)."""
    pct = lambda v: "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.2f}"  # noqa: E731
    thr = res["threshold"]
    lines = [f"{res['model']} on {res['n_slides']} labelled slides {res['class_counts']}"
             + (f" ({res['n_unlabelled']} unlabelled, not scored)" if res["n_unlabelled"] else ""),
             f"AUC {pct(res['auc'])}  acc {pct(res['acc'])}  F1 {pct(res['f1'])}  bal. acc {pct(res['bal_acc'])}"
             f"  ({res['decision']}{'' if thr is None else f' {thr:.3f}'})",
             "confusion matrix (rows true, columns predicted): "
             + "; ".join(f"{c}: {row}" for c, row in zip(res["classes"], res["confusion_matrix"]))]
    return "\n".join(lines)

"""The run report's and ``samtrain compare``'s figures, written as PNGs.

matplotlib's object API on the Agg canvas (no pyplot, no global backend switch), imported inside each
function so that importing this module costs nothing.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

DPI = 110
POS_COLOUR, NEG_COLOUR, POOLED_COLOUR = "#c0392b", "#2471a3", "#111111"


def _figure(w: float, h: float, margins: dict | None = None):
    """A figure on the Agg canvas: fixed ``margins`` (fractions, cheap) or constrained layout (~2x the draw time)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout=None if margins else "constrained")
    if margins:
        fig.subplots_adjust(**margins)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 3})  # zlib 3: about as small as 6, faster
    return path


def learning_curves(m: dict[str, np.ndarray], best_epoch: int | None, title: str, path: Path) -> Path:
    """Loss terms (every ``train_*`` column but seconds) and validation loss | validation AUC, per epoch.

    Args:
        m: metrics.csv columns (trainer/run_files.read_metrics).
        best_epoch: the selected epoch (marked), or None.
    """
    fig = _figure(9.0, 3.2, dict(left=0.07, right=0.985, bottom=0.15, top=0.83, wspace=0.22))
    ax_l, ax_a = fig.subplots(1, 2)
    ep = m.get("epoch", np.arange(len(next(iter(m.values()), []))))
    terms = [k for k in m if k.startswith("train_") and k != "train_seconds" and np.isfinite(m[k]).any()]
    for k in terms:
        ax_l.plot(ep, m[k], marker=".", lw=1.4 if k == "train_loss" else 1.0, label=k)
    if "val_loss" in m and np.isfinite(m["val_loss"]).any():
        ax_l.plot(ep, m["val_loss"], marker=".", lw=1.6, ls="--", color="black", label="val_loss")
    ax_l.set(xlabel="epoch", ylabel="loss", title="losses")
    if "val_auc" in m:
        ax_a.plot(ep, m["val_auc"], marker="o", color="#1e8449", label="val AUC")
    ax_a.set(xlabel="epoch", ylabel="validation AUC", title="validation AUC", ylim=(-0.02, 1.02))
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_l, ax_a):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best_epoch is not None and best_epoch >= 0:
            ax.axvline(best_epoch, color="#7d3c98", ls=":", lw=1.5, label=f"selected epoch {best_epoch}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right" if ax is ax_a else "upper right")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def roc_pr(per_fold: list[tuple[str, np.ndarray, np.ndarray]], pooled: tuple[np.ndarray, np.ndarray],
           band: dict | None, pooled_label: str, title: str, path: Path) -> Path:
    """ROC and precision-recall: thin line per fold, pooled curve thick with its bootstrap band.

    Args:
        per_fold: ``(name, score (n,), positive mask (n,))`` per fold.
        pooled: ``(score, positive mask)`` of all folds together.
        band: trainer/curves.curve_bands output for the pooled curve, or None.
    """
    from trainer.curves import pr_points, roc_points

    fig = _figure(9.0, 4.2, dict(left=0.07, right=0.985, bottom=0.12, top=0.87, wspace=0.2))
    ax_r, ax_p = fig.subplots(1, 2)
    for name, s, pos in per_fold:
        fpr, tpr = roc_points(s, pos)
        if np.isfinite(fpr).all():
            ax_r.plot(fpr, tpr, lw=0.8, alpha=0.55, label=name if len(per_fold) <= 10 else None)
        rec, prec = pr_points(s, pos)
        if np.isfinite(rec).all():
            ax_p.plot(rec, prec, lw=0.8, alpha=0.55, drawstyle="steps-post")
    if band is not None:
        ax_r.fill_between(band["grid"], band["tpr_lo"], band["tpr_hi"], color=POOLED_COLOUR, alpha=0.15,
                          lw=0, label="95 % bootstrap band")
        ax_p.fill_between(band["grid"], band["prec_lo"], band["prec_hi"], color=POOLED_COLOUR, alpha=0.15, lw=0,
                          step="post")
    fpr, tpr = roc_points(*pooled)
    ax_r.plot(fpr, tpr, lw=2.2, color=POOLED_COLOUR, label=pooled_label)
    rec, prec = pr_points(*pooled)
    ax_p.plot(rec, prec, lw=2.2, color=POOLED_COLOUR, drawstyle="steps-post", label="pooled")
    prevalence = float(np.mean(pooled[1])) if len(pooled[1]) else math.nan
    ax_p.axhline(prevalence, color="grey", ls=":", lw=1, label=f"prevalence {prevalence:.2f}")
    ax_r.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax_r.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)", xlim=(0, 1),
             ylim=(0, 1.01))
    ax_p.set(xlabel="recall", ylabel="precision", title="precision-recall (test)", xlim=(0, 1), ylim=(0, 1.01))
    for ax in (ax_r, ax_p):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if ax is ax_r else "lower left")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def confusion(cm: np.ndarray, classes: list[str], title: str, path: Path) -> Path:
    """Annotated confusion matrix ``cm[true, predicted]`` (counts)."""
    C = len(classes)
    fig = _figure(1.6 + 1.1 * C, 1.3 + 1.0 * C)
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, int(cm.max())))
    total = max(1, int(cm.sum()))
    for i in range(C):
        for j in range(C):
            v = int(cm[i, j])
            ax.text(j, i, f"{v}\n({100 * v / total:.0f} %)", ha="center", va="center", fontsize=9,
                    color="white" if v > 0.6 * cm.max() else "black")
    ax.set_xticks(range(C), classes)
    ax.set_yticks(range(C), classes)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def probability_histograms(y: np.ndarray, prob: np.ndarray, classes: list[str], thresholds: list[float],
                           path: Path) -> Path:
    """Predicted probability of each scored class, one histogram per true class.

    Binary: one panel, p(positive class), with the validation thresholds of the folds marked.
    Multi-class: one panel per class k, p(k) for slides of class k against the others.
    """
    C = prob.shape[1]
    cols = [1] if C == 2 else list(range(C))
    fig = _figure(min(4.2 * len(cols), 12.6), 3.3, dict(left=0.12 / len(cols), right=0.98, bottom=0.15,
                                                           top=0.9, wspace=0.25))
    axes = np.atleast_1d(fig.subplots(1, len(cols)))
    bins = np.linspace(0, 1, 26)
    for ax, k in zip(axes, cols):
        groups = ([(classes[c], y == c) for c in range(C)] if C == 2
                  else [(classes[k], y == k), (f"not {classes[k]}", y != k)])
        for (name, sel), colour in zip(groups, (NEG_COLOUR, POS_COLOUR) if C == 2 else (POS_COLOUR, NEG_COLOUR)):
            ax.hist(prob[sel, k], bins=bins, alpha=0.55, color=colour, label=f"true {name} ({int(sel.sum())})")
        if C == 2:
            for i, t in enumerate(thresholds):
                ax.axvline(t, color="black", ls=":", lw=1, label="fold thresholds (val)" if i == 0 else None)
        ax.set(xlabel=f"p({classes[k]})", ylabel="slides", title=f"p({classes[k]}) on test", xlim=(0, 1))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def value_spread(series: dict[str, np.ndarray], xlabel: str, title: str, path: Path) -> Path:
    """Box plot with the points of each named series (e.g. SG2M mask ratios per fold)."""
    names = list(series)
    fig = _figure(max(4.5, 0.9 * len(names) + 2.0), 3.4)
    ax = fig.subplots()
    data = [np.asarray(series[n], float)[np.isfinite(np.asarray(series[n], float))] for n in names]
    try:
        ax.boxplot(data, orientation="horizontal", widths=0.5)  # matplotlib >= 3.10
    except TypeError:
        ax.boxplot(data, vert=False, widths=0.5)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, start=1):
        ax.scatter(d, i + rng.uniform(-0.15, 0.15, len(d)), s=6, alpha=0.4, color=POS_COLOUR)
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.set(xlabel=xlabel, title=title)
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def quantile_strip(quantiles: dict[float, float], xlabel: str, title: str, path: Path) -> Path:
    """Recorded percentiles of a distribution (e.g. ``{10: 0.13, 50: 0.30, 90: 0.86}``) on a 0-1 axis."""
    qs = sorted(quantiles)
    fig = _figure(6.5, 1.9)
    ax = fig.subplots()
    vals = [quantiles[q] for q in qs]
    ax.plot([vals[0], vals[-1]], [0, 0], color=POS_COLOUR, lw=6, alpha=0.35, solid_capstyle="butt")
    for q, v in zip(qs, vals):
        ax.plot([v], [0], "|" if q != 50 else "D", color=POS_COLOUR if q != 50 else POOLED_COLOUR, ms=16 if q != 50
                else 8, mew=2)
        ax.annotate(f"p{q:g} {v:.2f}", (v, 0), xytext=(0, 12), textcoords="offset points", ha="center", fontsize=8)
    ax.set(xlim=(0, 1), ylim=(-1, 1.3), xlabel=xlabel, title=title)
    ax.set_yticks([])
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def forest(rows: list[dict], title: str, path: Path) -> Path:
    """Forest plot: one row per (comparison, metric): mean paired difference and its interval.

    Args:
        rows: ``{"label", "mean_diff", "lo", "hi", "wins", "n"}`` dicts, top to bottom (``wins`` not an int:
            a pooled figure, ``n`` counts slides).
    """
    fig = _figure(8.0, 0.9 + 0.36 * max(1, len(rows)))
    ax = fig.subplots()
    ys = np.arange(len(rows))[::-1]
    for y, r in zip(ys, rows):
        d, lo, hi = r["mean_diff"], r["lo"], r["hi"]
        if not math.isfinite(d):
            continue
        colour = "#1e8449" if lo > 0 else ("#c0392b" if hi < 0 else "#555555")
        ax.plot([lo, hi], [y, y], color=colour, lw=2)
        ax.plot([d], [y], "o", color=colour, ms=6)
        sign = f"{r['wins']}/{r['n']} folds" if isinstance(r.get("wins"), int) else f"{r['n']} slides"
        ax.annotate(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]  {sign}", (1.0, y),
                    xycoords=("axes fraction", "data"), xytext=(6, 0), textcoords="offset points", va="center",
                    fontsize=8)
    ax.axvline(0.0, color="black", lw=1)
    ax.set_yticks(ys, [r["label"] for r in rows], fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("mean paired difference A - B with its 95 % bootstrap interval (right: folds where A > B)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)

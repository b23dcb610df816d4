"""The run report: ``RUN/report/`` PNGs and one self-contained ``index.html`` (written by every ``fit``,
re-drawn by ``samtrain report RUN``).

Inputs are the run directory's files only (results.json, fold_*/metrics.csv, fold_*/predictions.csv), so a
report can be drawn for any finished run, on any machine, without torch.
"""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np

from trainer.run_files import fold_dir, fold_flags, load_results, pooled_predictions, pooled_test_auc, read_metrics

HEADINGS = {"summary": "Summary", "folds": "Folds", "learning": "Learning curves", "roc": "ROC and precision-recall",
            "confusion": "Confusion matrix", "probs": "Predicted probabilities", "sg2m": "SG2M mask ratios",
            "config": "Configuration"}
BAND_BOOT = 500
OWN_FILES = ("learning_*.png", "roc_pr*.png", "confusion.png", "probabilities.png", "sg2m_ratios.png", "index.html")
METRIC_NAMES = {"auc": "AUC", "acc": "accuracy", "f1": "F1", "bal_acc": "balanced accuracy"}
SECTION_NAMES = {"test": "test", "val": "validation", "test_optimistic": "OPTIMISTIC (test-fold threshold)"}


def _pct(v) -> str:
    return "n/a" if v is None or not isinstance(v, (int, float)) or not math.isfinite(v) else f"{100 * v:.2f}"


def ci_text(ci: dict | None) -> str:
    """``'87.30 [80.10, 93.20]'`` (percent) for an auc_ci dict; 'n/a' when undefined."""
    if not ci or not math.isfinite(ci.get("auc", math.nan)):
        return "n/a"
    return f"{_pct(ci['auc'])} [{_pct(ci['lo'])}, {_pct(ci['hi'])}]"


def _predicted(test, folds: list[dict]) -> np.ndarray:
    """Class predicted for each pooled test row: binary at its fold's validation threshold, else argmax."""
    if test.prob.shape[1] != 2:
        return test.prob.argmax(1)
    thr = np.array([(folds[i]["test"].get("threshold") if folds[i]["test"].get("threshold") is not None else 0.5)
                    for i in test.fold], dtype=np.float64)
    return (test.score >= thr).astype(np.int64)


def confusion_counts(test, folds: list[dict], C: int) -> np.ndarray:
    """``(C, C)`` counts ``[true, predicted]`` of the pooled test rows (see ``_predicted``)."""
    cm = np.zeros((C, C), dtype=np.int64)
    np.add.at(cm, (test.y, _predicted(test, folds)), 1)
    return cm


def _series(obj, name: str = "") -> tuple[dict[str, list], dict[str, object]]:
    """Split a recorded spread into numeric series (drawn) and scalar statistics (tabulated)."""
    series, scalars = {}, {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            s, c = _series(v, f"{name}.{k}" if name else str(k))
            series.update(s)
            scalars.update(c)
    elif isinstance(obj, (list, tuple)) and obj and all(isinstance(x, (int, float)) for x in obj):
        series[name or "ratios"] = list(obj)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            s, c = _series(v, f"{name}[{i}]")
            series.update(s)
            scalars.update(c)
    elif obj is not None:
        scalars[name or "value"] = obj
    return series, scalars


def _summary_section(results: dict, pooled: dict, H) -> str:
    rows = []
    for section, metrics in results.get("summary", {}).items():
        if not isinstance(metrics, dict):
            continue
        for k, v in metrics.items():
            if isinstance(v, dict) and "mean" in v:
                extra = ", ".join(f"{kk} {_pct(vv) if kk != 'n' else vv}" for kk, vv in v.items()
                                  if kk not in ("mean", "std") and isinstance(vv, (int, float)))
                rows.append([f"{SECTION_NAMES.get(section, section)} {METRIC_NAMES.get(k, k)}",
                             f"{_pct(v['mean'])} ± {_pct(v.get('std'))}", extra])
    rows.append(["test AUC, pooled over folds", ci_text(pooled),
                 f"95 % bootstrap interval, {pooled.get('n_boot', '?')} resamples of {pooled.get('n_slides', '?')} "
                 f"slides ({pooled.get('n_rows', '?')} test predictions)"])
    cfg = results.get("config", {})
    intro = (f"model <b>{H.esc(cfg.get('model', '?'))}</b>, {len(results['folds'])} folds, "
             f"{H.esc(results.get('n_slides', '?'))} slides {H.esc(results.get('class_counts', ''))}. Test figures "
             "use the threshold chosen on validation; figures in percent.")
    warn = "".join(f"<li>{H.esc(w)}</li>" for w in results.get("warnings") or [])
    return (f"<p>{intro}</p>" + H.table(["figure", "mean ± std over folds / value", "more"], rows)
            + (f"<p><b>Notes from the run</b></p><ul>{warn}</ul>" if warn else ""))


def _folds_section(results: dict, H) -> str:
    head = ["fold", "best epoch", "epochs run", "early stop", "val AUC", "threshold (val)", "test AUC", "test acc",
            "test F1", "test bal. acc", "train / val / test slides", "flags"]
    rows, cls = [], []
    for f in results["folds"]:
        t = f.get("test", {})
        thr = t.get("threshold")
        flags = fold_flags(f)
        rows.append([f.get("split"), f.get("best_epoch"), f.get("epochs_run", ""), "yes" if f.get("early_stopped")
                     else "no", _pct(f.get("val", {}).get("auc")), "argmax" if thr is None else f"{thr:.3f}",
                     _pct(t.get("auc")), _pct(t.get("acc")), _pct(t.get("f1")), _pct(t.get("bal_acc")),
                     f"{f.get('n_train', '?')} / {f.get('n_val', '?')} / {f.get('n_test', '?')}", flags or "-"])
        cls.append("flag" if flags else "")
    return H.table(head, rows, row_class=cls)


def _learning_section(run: Path, folds: list[dict], out: Path, H, P) -> str:
    figs = []
    for f in folds:
        m = read_metrics(fold_dir(run, f) / "metrics.csv")
        if m:
            p = P.learning_curves(m, f.get("best_epoch"), f"fold {f['split']}", out / f"learning_{f['split']}.png")
            figs.append(H.img(p, f"fold {f['split']}: selected epoch {f.get('best_epoch')}"))
    return f'<div class="figs">{"".join(figs)}</div>' if figs else "<p>No metrics.csv in the fold directories.</p>"


def _roc_section(test, folds: list[dict], classes: list[str], pooled: dict, out: Path, seed: int, H, P) -> str:
    from trainer.curves import curve_bands

    groups = test.slide_ids.astype(str)
    C = len(classes)
    figs = []
    for k in ([1] if C == 2 else range(C)):
        pos = test.y == k
        per_fold = [(folds[i]["split"], test.prob[test.fold == i, k], pos[test.fold == i]) for i in range(len(folds))]
        band = curve_bands(test.prob[:, k], pos, test.y, groups, n_boot=BAND_BOOT, seed=seed) if pos.any() else None
        label = f"pooled, AUC {ci_text(pooled)} %" if C == 2 else f"pooled {classes[k]} vs rest"
        p = P.roc_pr(per_fold, (test.prob[:, k], pos), band, label, f"positive class: {classes[k]}",
                     out / f"roc_pr_{k}.png" if C > 2 else out / "roc_pr.png")
        figs.append(H.img(p, f"{classes[k]} vs rest: per fold (thin), pooled (thick) with its 95 % bootstrap "
                             "band over slides"))
    return "".join(figs)


def _confusion_section(test, results: dict, out: Path, H, P) -> str:
    classes, folds = results["classes"], results["folds"]
    cm = confusion_counts(test, folds, len(classes))
    rule = "each fold's validation threshold" if len(classes) == 2 else "argmax"
    p = P.confusion(cm, classes, f"test, all folds ({rule})", out / "confusion.png")
    repeats = results.get("config", {}).get("repeats", 1) or 1
    caption = f"counts over every fold's test slides at {rule}" + ("; a slide appears once per repeat"
                                                                     if repeats > 1 else "")
    return H.img(p, caption) + H.table(["true \\ predicted", *classes],
                                       [[c, *cm[i]] for i, c in enumerate(classes)])


def _sg2m_section(results: dict, out: Path, H, P) -> str | None:
    """The recorded SG2M ratio spread (run-level and/or per fold); None when the run recorded none."""
    folds = results["folds"]
    spread = {"all": results["sg2m_ratio_spread"]} if results.get("sg2m_ratio_spread") is not None else {}
    spread.update({f["split"]: f["sg2m_ratio_spread"] for f in folds if f.get("sg2m_ratio_spread") is not None})
    if not spread:
        return None
    series, scalars = _series(spread if len(spread) > 1 else next(iter(spread.values())))
    quantiles = {float(m.group(1)): float(v) for k, v in scalars.items()
                 if (m := re.fullmatch(r"p(\d+(?:\.\d+)?)", k)) and isinstance(v, (int, float))}
    body = ""
    if series:
        p = P.value_spread(series, "mask ratio", "SG2M mask ratios across segments", out / "sg2m_ratios.png")
        body += H.img(p, "SG2M mask ratio of each segment (box: quartiles)")
    elif len(quantiles) >= 2:
        p = P.quantile_strip(quantiles, "mask ratio", "SG2M mask ratio across segments: percentiles",
                             out / "sg2m_ratios.png")
        body += H.img(p, "percentiles of the SG2M mask ratio over the cohort's segments")
    if scalars:
        body += H.table(["statistic", "value"], [[k, f"{v:.4g}" if isinstance(v, float) else v]
                                                 for k, v in scalars.items()])
    return body


def write_report(run: str | Path, out: str | Path | None = None, n_boot: int | None = None, seed: int = 0) -> Path:
    """Draw the report of a finished run. Returns the path of ``index.html``.

    Args:
        run: the run directory (``samtrain fit --out``).
        out: where to write (default ``RUN/report``); the report's own files there are replaced.
        n_boot: resamples of the pooled-AUC interval (default: reuse results.json's, else 2000; the curve
            bands use 500).
    """
    from trainer import report_html as H
    from trainer import report_plots as P

    run = Path(run)
    results = load_results(run)
    out = Path(out) if out is not None else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    for pattern in OWN_FILES:  # a previous drawing's files (fold names may have changed); nothing else
        for old in out.glob(pattern):
            old.unlink(missing_ok=True)
    classes, folds = results["classes"], results["folds"]
    pooled = results.get("summary", {}).get("test_auc_pooled")
    if not pooled or (n_boot and pooled.get("n_boot") != n_boot):
        pooled = pooled_test_auc(run, results, n_boot=n_boot, seed=seed)
    test = pooled_predictions(run, results, "test")
    thresholds = [f["test"]["threshold"] for f in folds if f.get("test", {}).get("threshold") is not None]
    sections = [
        (HEADINGS["summary"], _summary_section(results, pooled, H)),
        (HEADINGS["folds"], _folds_section(results, H)),
        (HEADINGS["learning"], _learning_section(run, folds, out, H, P)),
        (HEADINGS["roc"], _roc_section(test, folds, classes, pooled, out, seed, H, P)),
        (HEADINGS["confusion"], _confusion_section(test, results, out, H, P)),
        (HEADINGS["probs"], H.img(P.probability_histograms(test.y, test.prob, classes, thresholds,
                                                           out / "probabilities.png"),
                                  "predicted probabilities of the test slides, by true class")),
    ]
    sg2m = _sg2m_section(results, out, H, P)
    if sg2m is not None:
        sections.append((HEADINGS["sg2m"], sg2m))
    sections.append((HEADINGS["config"], H.table(["setting", "value"],
                                                 [[k, v] for k, v in results.get("config", {}).items()])))
    index = out / "index.html"
    index.write_text(H.page(f"Run report: {run.resolve().name}", sections,
                            intro=f"{H.esc(run)}; drawn from results.json and the fold directories."))
    return index


def write_report_or_warn(run: str | Path) -> Path | None:
    """``write_report`` for the end of ``fit``: a failure prints a warning and never fails the fit."""
    try:
        return write_report(run)
    except Exception as e:  # noqa: BLE001 -- the fit's results are already written; the report is extra
        sys.stderr.write(f"warning: the run report was not written ({type(e).__name__}: {e}); "
                         f"draw it again with `samtrain report {run}`\n")
        return None

"""``samtrain compare``: paired comparison of runs trained on the same splits.

The first run (A) is compared with each other run (B): for every metric, the per-(repeat, fold) values of
both runs are paired, and the report gives the mean of ``A - B`` with a 95 % percentile bootstrap interval
over the folds x repeats and the paired sign (in how many folds A beats B). The pooled test AUC is also
compared on the same slides, with a paired bootstrap over slides (trainer/bootstrap.py).

Runs whose splits differ (another seed, fold count, validation share, store or labels) are refused, with
the folds and slides that differ named: a paired difference is only meaningful on the same data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clam2sam.errors import UsageError
from trainer.run_files import load_results, load_splits, pooled_predictions

# (label, section of a fold's results, key)
METRICS = [("test AUC", "test", "auc"), ("test acc", "test", "acc"), ("test F1", "test", "f1"),
           ("test bal. acc", "test", "bal_acc"), ("val AUC", "val", "auc")]
POOLED = "test AUC (pooled)"
SPLIT_SETTINGS = ("seed", "folds", "repeats", "val_frac", "splits_dir")  # named when they differ
_SHOW = 4  # slide ids named in a refusal


@dataclass
class Run:
    path: Path
    name: str
    results: dict
    splits: list[dict]


def load_run(path: str | Path, name: str | None = None) -> Run:
    path = Path(path)
    return Run(path, name or path.resolve().name, load_results(path), load_splits(path))


def _ids(xs) -> str:
    xs = sorted(xs)
    return ", ".join(xs[:_SHOW]) + (f", ... ({len(xs)} in all)" if len(xs) > _SHOW else "")


def split_differences(a: Run, b: Run) -> list[str]:
    """Human-readable differences between the splits (and classes) of two runs; [] when they match."""
    diffs = []
    if list(a.results["classes"]) != list(b.results["classes"]):
        diffs.append(f"classes {a.results['classes']} vs {b.results['classes']}")
    sa, sb = {s["name"]: s for s in a.splits}, {s["name"]: s for s in b.splits}
    only_a, only_b = sorted(set(sa) - set(sb)), sorted(set(sb) - set(sa))
    if only_a:
        diffs.append(f"folds only in {a.name}: {', '.join(only_a)}")
    if only_b:
        diffs.append(f"folds only in {b.name}: {', '.join(only_b)}")
    for name in sorted(set(sa) & set(sb)):
        for part in ("test", "val", "train"):
            xa, xb = set(map(str, sa[name][part])), set(map(str, sb[name][part]))
            if xa != xb:
                msg = f"fold {name} {part}:"
                if xa - xb:
                    msg += f" {len(xa - xb)} slides only in {a.name} ({_ids(xa - xb)})"
                if xb - xa:
                    msg += f"{';' if xa - xb else ''} {len(xb - xa)} slides only in {b.name} ({_ids(xb - xa)})"
                diffs.append(msg)
    return diffs


def check_same_splits(runs: list[Run]) -> None:
    """Refuse (UsageError naming what differs) unless every run has the first run's splits and classes."""
    ref = runs[0]
    for r in runs[1:]:
        d = split_differences(ref, r)
        if d:
            ca, cb = ref.results.get("config", {}), r.results.get("config", {})
            causes = [f"{k} {ca.get(k)} vs {cb.get(k)}" for k in SPLIT_SETTINGS if ca.get(k) != cb.get(k)]
            shown = "; ".join(d[:3]) + (f"; ... ({len(d)} differences in all)" if len(d) > 3 else "")
            raise UsageError(f"runs {ref.name} and {r.name} were not trained on the same splits"
                             + (f" ({', '.join(causes)})" if causes else "") + f": {shown}",
                             path=r.path, fix="train both on the same store with the same --seed, --folds, --repeats "
                                              "and --val-frac (or the same --splits directory), then compare")


def fold_values(run: Run, section: str, key: str) -> dict[str, float]:
    """``{split name: value}`` of one metric over the run's folds (NaN when missing)."""
    out = {}
    for f in run.results["folds"]:
        v = f.get(section, {}).get(key)
        out[f["split"]] = float(v) if isinstance(v, (int, float)) and v is not None else math.nan
    return out


def _pooled_aligned(a: Run, b: Run):
    """Test rows of both runs aligned on (fold, slide); refuses when a slide's label differs."""
    pa, pb = pooled_predictions(a.path, a.results), pooled_predictions(b.path, b.results)
    fa = [a.results["folds"][i]["split"] for i in pa.fold]
    fb = [b.results["folds"][i]["split"] for i in pb.fold]
    index_b = {(f, s): i for i, (f, s) in enumerate(zip(fb, pb.slide_ids))}
    keys = list(zip(fa, pa.slide_ids))
    missing = [k for k in keys if k not in index_b]
    if missing or len(keys) != len(index_b):
        raise UsageError(f"runs {a.name} and {b.name}: the test predictions do not cover the same slides "
                         f"(e.g. {missing[:_SHOW]})", path=b.path, fix="re-run both fits to completion")
    j = np.array([index_b[k] for k in keys], dtype=np.int64)
    bad = np.flatnonzero(pa.y != pb.y[j])
    if len(bad):
        raise UsageError(f"runs {a.name} and {b.name} label some slides differently "
                         f"({_ids([str(pa.slide_ids[i]) for i in bad])})", path=b.path,
                         fix="train both with the same labels (store labels or the same --labels file)")
    return pa.y, pa.prob, pb.prob[j], pa.slide_ids.astype(str)


def compare_runs(paths: list[str | Path], n_boot: int = 10000, seed: int = 0) -> dict:
    """Compare the first run with each of the others (see the module docstring).

    Returns:
        ``{"runs": [...], "folds": [split names], "comparisons": [{"a", "b", "metrics": {label: ci}}],
        "per_fold": {run: {label: [values]}}, "n_boot", "seed", "level", "method"}``; each ``ci`` is
        trainer/bootstrap.paired_diff_ci's dict (the pooled AUC: paired_auc_diff_ci's).
    """
    from trainer.bootstrap import DEFAULT_BOOT, auc_ci, paired_auc_diff_ci, paired_diff_ci

    if len(paths) < 2:
        raise UsageError("give at least two runs to compare", fix="samtrain compare RUN_A RUN_B [RUN_C ...]")
    runs = [load_run(p) for p in paths]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # same folder names under different parents: use the paths
        for r in runs:
            r.name = str(r.path)
    check_same_splits(runs)
    folds = [f["split"] for f in runs[0].results["folds"]]
    for r in runs[1:]:
        mine = {f["split"] for f in r.results["folds"]}
        if set(folds) != mine:
            raise UsageError(f"runs {runs[0].name} and {r.name} finished different folds "
                             f"({sorted(set(folds) ^ mine)})", path=r.path, fix="re-run both fits to completion")
    per_fold = {r.name: {label: [fold_values(r, sec, key)[f] for f in folds] for label, sec, key in METRICS}
                for r in runs}
    out_runs = []
    for r in runs:
        pooled = r.results.get("summary", {}).get("test_auc_pooled")
        if not pooled:
            pooled = auc_ci(*_pooled_one(r), n_boot=DEFAULT_BOOT, seed=seed)
        cfg = r.results.get("config", {})
        out_runs.append({"name": r.name, "path": str(r.path), "model": cfg.get("model"),
                         "n_folds": len(r.results["folds"]), "repeats": cfg.get("repeats", 1),
                         "pooled_test_auc": pooled,
                         "mean": {label: _nanmean(per_fold[r.name][label]) for label, _, _ in METRICS}})
    comparisons = []
    a = runs[0]
    for b in runs[1:]:
        metrics = {label: paired_diff_ci(per_fold[a.name][label], per_fold[b.name][label], n_boot=n_boot, seed=seed)
                   for label, _, _ in METRICS}
        y, pa, pb, groups = _pooled_aligned(a, b)
        metrics[POOLED] = paired_auc_diff_ci(y, pa, pb, groups, n_boot=min(n_boot, DEFAULT_BOOT), seed=seed)
        comparisons.append({"a": a.name, "b": b.name, "metrics": metrics})
    return {"runs": out_runs, "folds": folds, "comparisons": comparisons, "per_fold": per_fold,
            "n_boot": n_boot, "seed": seed, "level": 0.95,
            "method": "mean of paired differences A - B over folds x repeats, percentile bootstrap interval; "
                      f"'{POOLED}': difference of pooled test AUCs, paired bootstrap over slides stratified by class"}


def _pooled_one(r: Run):
    p = pooled_predictions(r.path, r.results)
    return p.y, p.prob, p.slide_ids.astype(str)


def _nanmean(v) -> float:
    v = np.asarray(v, float)
    return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan


def fmt(v, signed=False) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def table_text(res: dict) -> str:
    """The paired table as plain text (what the CLI prints on stderr)."""
    lines = []
    for c in res["comparisons"]:
        lines.append(f"A = {c['a']}  vs  B = {c['b']}   ({len(res['folds'])} paired folds: "
                     f"{', '.join(res['folds'])})")
        head = f"{'metric':<18} {'A':>7} {'B':>7} {'A - B':>8}  {'95 % interval':<19} {'A > B':>10}"
        lines += [head, "-" * len(head)]
        for label, ci in c["metrics"].items():
            ma, mb = (ci["auc_a"], ci["auc_b"]) if label == POOLED else (ci["mean_a"], ci["mean_b"])
            sign = "" if label == POOLED else f"{ci['wins']}/{ci['n']}" + (f" ({ci['ties']} tie)" if ci["ties"] == 1
                                                                         else f" ({ci['ties']} ties)" if ci["ties"]
                                                                         else "")
            lines.append(f"{label:<18} {fmt(ma):>7} {fmt(mb):>7} {fmt(ci['mean_diff'], True):>8}  "
                         f"{'[' + fmt(ci['lo'], True) + ', ' + fmt(ci['hi'], True) + ']':<19} {sign:>10}")
        lines.append("")
    lines.append("Per-fold metrics: mean over folds; interval: percentile bootstrap of the mean paired difference "
                 f"over folds x repeats ({res['n_boot']} resamples); pooled AUC: paired bootstrap over slides. "
                 "With few folds the interval is narrow and optimistic.")
    return "\n".join(lines)


def forest_rows(res: dict) -> list[dict]:
    rows = []
    for c in res["comparisons"]:
        for label, ci in c["metrics"].items():
            rows.append({"label": f"{label}: {c['a']} - {c['b']}", "mean_diff": ci["mean_diff"], "lo": ci["lo"],
                         "hi": ci["hi"], "wins": ci.get("wins", "-"), "n": ci.get("n", ci.get("n_slides"))})
    return rows

"""Rich progress (folds, epochs, steps, current validation AUC) and the final summary table."""
from __future__ import annotations

import math


class NullProgress:
    """No-op progress (library use, ``--quiet``)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def start_fold(self, name, max_epochs, start_epoch, n_steps):
        pass

    def step(self, i):
        pass

    def end_epoch(self, epoch, val_auc, best_epoch):
        pass

    def end_fold(self, res):
        pass


class RichProgress(NullProgress):
    """Three bars on stderr: folds, epochs of the current fold (with val AUC), steps of the epoch."""

    def __init__(self, n_folds: int, console=None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console or Console(stderr=True)
        self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=self.console,
                          transient=False)
        self.t_folds = self.p.add_task("folds", total=n_folds, info="")
        self.t_epochs = self.p.add_task("epochs", total=1, info="")
        self.t_steps = self.p.add_task("steps", total=1, info="")

    def __enter__(self):
        self.p.start()
        return self

    def __exit__(self, *exc):
        self.p.stop()
        return False

    def start_fold(self, name, max_epochs, start_epoch, n_steps):
        self.n_steps = n_steps
        self.p.reset(self.t_epochs, total=max_epochs, completed=start_epoch, description=f"fold {name}", info="")
        self.p.reset(self.t_steps, total=n_steps, completed=0)

    def step(self, i):
        self.p.update(self.t_steps, completed=i + 1)

    def end_epoch(self, epoch, val_auc, best_epoch):
        self.p.update(self.t_epochs, completed=epoch + 1, info=f"val AUC {val_auc:.3f} (best epoch {best_epoch})")
        self.p.reset(self.t_steps, total=self.n_steps, completed=0)

    def end_fold(self, res):
        self.p.advance(self.t_folds)
        t = res["test"]
        self.p.update(self.t_folds, info=f"last fold test AUC {t['auc']:.3f}")


def make_progress(cfg, n_folds: int, console=None):
    return NullProgress() if cfg.quiet else RichProgress(n_folds, console)


def _fmt(ms: dict | None, pct: bool = True) -> str:
    if not ms or ms.get("n", 0) == 0 or not math.isfinite(ms["mean"]):
        return "n/a"
    f = 100.0 if pct else 1.0
    return f"{ms['mean'] * f:.2f} ± {ms['std'] * f:.2f}"


def summary_table(results: dict) -> str:
    """Markdown table: per fold, then mean ± std (percent). Optimistic figures in their own labelled columns."""
    has_opt = "test_optimistic" in results["summary"]
    head = ["fold", "best epoch", "val AUC", "threshold (val)", "test AUC", "test acc", "test F1", "test bal. acc"]
    if has_opt:
        head += ["OPTIMISTIC acc (test thr.)", "OPTIMISTIC F1 (test thr.)"]
    rows = []
    for f in results["folds"]:
        t = f["test"]
        thr = t.get("threshold")
        r = [f["split"], str(f["best_epoch"]), f"{100 * f['val']['auc']:.2f}" if math.isfinite(f['val']['auc'])
             else "n/a", "argmax" if thr is None else f"{thr:.3f}", f"{100 * t['auc']:.2f}",
             f"{100 * t['acc']:.2f}", f"{100 * t['f1']:.2f}",
             f"{100 * t['bal_acc']:.2f}" if math.isfinite(t['bal_acc']) else "n/a"]
        if has_opt:
            o = f["test_optimistic"]
            r += [f"{100 * o['acc']:.2f}", f"{100 * o['f1']:.2f}"]
        r.append(", ".join(f.get("flags", [])) or "-")
        rows.append(r)
    head.append("flags")
    s = results["summary"]
    r = ["mean ± std", "", _fmt(s["val"].get("auc")), "", _fmt(s["test"].get("auc")), _fmt(s["test"].get("acc")),
         _fmt(s["test"].get("f1")), _fmt(s["test"].get("bal_acc"))]
    if has_opt:
        r += [_fmt(s["test_optimistic"].get("acc")), _fmt(s["test_optimistic"].get("f1"))]
    rows.append(r + [""])
    ta = s["test"].get("auc") or {}
    if "median" in ta and math.isfinite(ta["median"]):
        rows.append(["median [IQR]", "", "", "", f"{100 * ta['median']:.2f} [{100 * ta['q1']:.2f}, "
                     f"{100 * ta['q3']:.2f}]"] + [""] * (len(head) - 5))
    pooled = s.get("test_auc_pooled")
    if pooled:  # all folds' test predictions scored together, bootstrap 95 % interval over slides
        from trainer.run_report import ci_text

        rows.append(["pooled [95 % CI]", "", "", "", ci_text(pooled)] + [""] * (len(head) - 5))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(x) + " |" for x in rows]
    cfg = results["config"]
    lines.append("")
    lines.append(f"model {cfg['model']} (group features {'on' if cfg['group_features'] else 'off'}), "
                 f"{len(results['folds'])} folds, {results['n_slides']} slides {results['class_counts']}. "
                 "Test figures use the threshold chosen on validation; OPTIMISTIC columns re-pick it on the test "
                 "fold (only for comparison with published numbers)."
                 + (" Pooled: the AUC of every fold's test predictions together, with a 95 % bootstrap interval "
                    "over slides." if s.get("test_auc_pooled") else ""))
    flagged = [f for f in results["folds"] if f.get("flags")]
    if flagged:
        from trainer.protocol_checks import FLAG_TEXT

        codes = sorted({c for f in flagged for c in f["flags"]})
        lines.append(f"WARNING: {len(flagged)} of {len(results['folds'])} folds flagged "
                     f"({'; '.join(f'{c}: {FLAG_TEXT.get(c, c)}' for c in codes)}); the mean includes them, "
                     "see the median [IQR] row.")
    for f in results["folds"]:
        srch = f.get("search")
        if srch:
            lines.append(f"fold {f['split']}: chosen on validation {srch['chosen_params'] or {}} "
                         f"(init {srch['chosen_init']}) among {len(srch['candidates'])} candidates")
    sp = results.get("sg2m_ratio_spread")
    if sp and sp.get("n_segments"):
        lines.append(f"SG2M mask ratio over {sp['n_segments']} segments ({sp['area_unit']}): p10 {sp['p10']:.2f}, "
                     f"median {sp['p50']:.2f}, p90 {sp['p90']:.2f}; {100 * sp['share_above_0.8']:.0f} % above 0.8; "
                     f"{100 * sp['mean_patch_share_dropped']:.0f} % of a slide's patches dropped on average.")
    for w in results.get("warnings", []):
        lines.append(f"note: {w}")
    excluded = results.get("excluded_slides") or []
    if excluded:                      # never silent: how many slides were left out, and why
        reasons: dict[str, int] = {}
        for e in excluded:
            reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
        lines.append(f"{len(excluded)} slides of the store left out: "
                     + "; ".join(f"{n} {r}" for r, n in reasons.items())
                     + " (per slide: results.json excluded_slides).")
    return "\n".join(lines)

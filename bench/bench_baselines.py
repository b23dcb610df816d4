"""Bench section 6: the baselines with and without group features (paper Tables 1 and 7).

Runs ``bench/compare_models.py`` on the same medium store and protocol as section 4 (5 folds, same seed
and splits, <= 12 epochs, patience 4, lr 1e-3) and embeds its markdown table.
"""
from __future__ import annotations

import subprocess
import sys
import time

from bench._common import ROOT, Ctx, Section
from bench.bench_accuracy import build_store


def run(ctx: Ctx) -> Section:
    folds = 2 if ctx.quick else 5
    epochs = ctx.extra.get("max_epochs") or (2 if ctx.quick else 12)
    patience = 2 if ctx.quick else 4
    store = build_store(ctx.medium_dir, ctx.work / f"acc_{ctx.medium_dir.name}.zarr", ctx)
    out = ctx.out / "baselines"
    models = "abmil,mean" if ctx.quick else "all"
    cmd = [sys.executable, str(ROOT / "bench" / "compare_models.py"), str(store), str(out), "--folds", str(folds),
           "--epochs", str(epochs), "--patience", str(patience), "--lr", "1e-3", "--seed", "2021",
           "--models", models, "--val-frac", "0.34" if ctx.quick else "0.2"]
    gt = ctx.medium_dir / "ground_truth"
    if gt.is_dir():
        cmd += ["--ground-truth", str(gt)]
    ctx.log("[baselines] " + " ".join(cmd))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True)
    secs = time.perf_counter() - t0
    md = out / "comparison.md"
    if p.returncode != 0 or not md.is_file():
        return Section("baselines", "6. Baselines with / without group features (Tables 1 and 7)",
                       f"compare_models failed (rc {p.returncode}):\n\n```\n{p.stderr[-3000:]}\n```",
                       error=f"compare_models rc {p.returncode}")
    body = (f"Same store, splits and training budget as section 4 (hidden dim 512, as the paper). "
            f"Wall time {secs / 60:.1f} min. Command:\n\n```\n{' '.join(cmd)}\n```\n\n" + md.read_text())
    return Section("baselines", "6. Baselines with / without group features (Tables 1 and 7)", body,
                   {"seconds": secs, "command": " ".join(cmd)})

"""Cost of the bootstrap intervals and of drawing a run report.

    .venv/bin/python bench/bench_bootstrap.py                     # AUC interval: vectorised vs a sklearn loop
    .venv/bin/python bench/bench_bootstrap.py --report RUN        # + time to draw RUN's report (into a temp dir)

Prints one line per figure; ratios are against a baseline measured in the same process.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def auc_interval(n: int = 200, n_boot: int = 2000) -> None:
    from sklearn.metrics import roc_auc_score

    from trainer.bootstrap import auc_ci

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
    s = rng.normal(size=n) + y
    auc_ci(y, s, n_boot=50)  # warm-up
    t = time.perf_counter()
    auc_ci(y, s, n_boot=n_boot)
    t_vec = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n_boot):  # the plain way: resample within classes, one roc_auc_score per resample
        idx = np.r_[rng.integers(0, n // 2, n // 2), n // 2 + rng.integers(0, n - n // 2, n - n // 2)]
        roc_auc_score(y[idx], s[idx])
    t_loop = time.perf_counter() - t
    print(f"AUC interval, {n} slides, {n_boot} resamples: vectorised {t_vec:.3f} s, roc_auc_score loop "
          f"{t_loop:.2f} s ({t_loop / t_vec:.0f}x)")


def report(run: str) -> None:
    from trainer.run_report import write_report

    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        write_report(run, d)
        print(f"report of {run}: {time.perf_counter() - t:.2f} s (first draw in this process, matplotlib import "
              "included)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", help="a run directory to draw the report of")
    a = ap.parse_args()
    auc_interval()
    if a.report:
        report(a.report)

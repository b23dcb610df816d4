"""Section 4 -- accuracy: AB-MIL vs SAM-MIL and the paper's ablations (Tables 2-4), K-fold x R repeats.

Converts the medium preset once (reused while complete), then runs ``samtrain fit`` for every config
with identical splits (same ``--seed``), ``--jobs`` fits at a time (each with 1 torch thread). Reports
mean +/- std over all folds of test AUC / accuracy / F1 (threshold from validation), and for AUC the paired
difference to AB-MIL and to full SAM-MIL (same folds) against the fold-to-fold spread.

    python bench/bench_accuracy.py --medium /tmp/c2s_bench_medium --repeats 3 --max-epochs 20
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import PY, ROOT, Ctx, Section, md_table  # noqa: E402

from bench.bench_sammil import ABLATIONS  # noqa: E402  (one list of the paper's ablations)

# (key, table, label, extra samtrain args)
CONFIGS = [(key, label.split(":")[0] if ":" in label else {"abmil": "baseline", "sammil": "full"}.get(key, "extra"),
            label, args) for key, label, args in ABLATIONS]
QUICK_KEYS = ("abmil", "sammil")
SAMTRAIN = [PY, "-m", "trainer"]


def build_store(archive: Path, out: Path, ctx: Ctx) -> Path:
    """Convert the whole cohort once (resumes / reuses a complete store)."""
    from clam2sam.convert.cohort import ConvertOptions, convert_cohort

    t = time.perf_counter()
    rep = convert_cohort(ConvertOptions(archive=archive, out=out, segments_dir=archive / "segments",
                                        dataset_csv=archive / "dataset.csv", checksums=False))
    if rep.return_code != 0:
        raise RuntimeError(f"converting {archive} failed: {rep}")
    ctx.log(f"[accuracy] store {out}: {rep} ({time.perf_counter() - t:.0f} s)")
    return out


def _fit(store: Path, run_dir: Path, args: list[str], common: list[str], log) -> dict:
    cmd = SAMTRAIN + ["fit", str(store), "--out", str(run_dir), *common, *args]
    log(f"[accuracy] start {run_dir.name}")
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT))
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed (rc {p.returncode}): {p.stderr[-2000:]}")
    res = json.loads((run_dir / "results.json").read_text())
    log(f"[accuracy] {run_dir.name}: test AUC {res['summary']['test']['auc']['mean']:.3f} "
        f"({time.perf_counter() - t:.0f} s)")
    return {"results": res, "cmd": shlex.join(["samtrain", *cmd[3:]]), "seconds": time.perf_counter() - t}


def _ms(vals: list[float]) -> tuple[float, float]:
    v = [x for x in vals if x is not None and not math.isnan(x)]
    if not v:
        return float("nan"), float("nan")
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, sd


def _per_fold(res: dict, metric: str) -> dict[str, float]:
    out = {}
    for f in res["folds"]:
        key = f"r{f.get('repeat', 0)}_f{f.get('fold', 0)}"
        out[key] = f["test"].get(metric)
    return out


def _versus(fold: dict, key: str, ref: str, ms: dict) -> tuple[float, float, int, float]:
    """Paired test-AUC difference of config ``key`` against ``ref``: (diff, paired sd, folds, spread), where
    spread is the larger fold-to-fold AUC std of the two (``ms``: key's (mean, std) per metric)."""
    d, dsd, n = _paired(fold[key]["auc"], fold[ref]["auc"])
    return d, dsd, n, max(ms["auc"][1], _ms(list(fold[ref]["auc"].values()))[1])


def _paired(a: dict, b: dict) -> tuple[float, float, int]:
    keys = [k for k in a if k in b and a[k] is not None and b[k] is not None]
    m, sd = _ms([a[k] - b[k] for k in keys])
    return m, sd, len(keys)


def _reps(key: str, reps: int, core_reps: int) -> int:
    return core_reps if key in QUICK_KEYS else reps


def _verdict(diff: float, spread: float) -> str:
    if math.isnan(diff) or math.isnan(spread):
        return "n/a"
    return "larger than spread" if abs(diff) > spread else "within spread"


def run(ctx: Ctx) -> Section:
    reps = int(ctx.extra.get("accuracy_repeats", 3))
    core_reps = int(ctx.extra.get("core_repeats") or reps)   # AB-MIL and full SAM-MIL
    folds = 2 if ctx.quick else 5
    epochs = ctx.extra.get("max_epochs") or (2 if ctx.quick else 12)
    patience = 2 if ctx.quick else 4
    jobs = int(ctx.extra.get("jobs", 2))
    configs = [c for c in CONFIGS if c[0] in QUICK_KEYS] if ctx.quick else CONFIGS
    store = build_store(ctx.medium_dir, ctx.work / f"acc_{ctx.medium_dir.name}.zarr", ctx)
    runs_root = ctx.out / "accuracy_runs"
    common = ["--folds", str(folds), "--max-epochs", str(epochs), "--patience",
              str(patience), "--lr", "1e-3", "--seed", "2021", "--threads", "1", "--cache", "--quiet"]
    if ctx.quick:
        common += ["--val-frac", "0.34"]
    ctx.log(f"[accuracy] {len(configs)} configs x {folds} folds x {reps} repeats, <= {epochs} epochs, {jobs} jobs")
    with ThreadPoolExecutor(max_workers=jobs) as ex:
        futs = {c[0]: ex.submit(_fit, store, runs_root / c[0], c[3] + ["--repeats", str(_reps(c[0], reps, core_reps))],
                                common, ctx.log) for c in configs}
        done = {}
        errors = []
        for k, f in futs.items():
            try:
                done[k] = f.result()
            except Exception as e:  # noqa: BLE001 - keep the other configs
                errors.append(f"{k}: {e}")
    fold = {k: {m: _per_fold(v["results"], m) for m in ("auc", "acc", "f1")} for k, v in done.items()}
    rows, data = [], {"folds": folds, "repeats": reps, "core_repeats": core_reps, "max_epochs": epochs,
                      "configs": {}, "errors": errors}
    for key, table, label, args in configs:
        if key not in done:
            rows.append([table, label, "", "failed", "", "", "", "", ""])
            continue
        cell = {}
        ms = {m: _ms(list(fold[key][m].values())) for m in ("auc", "acc", "f1")}
        row = [table, label, f"{folds} x {_reps(key, reps, core_reps)}"] + \
            [f"{ms[m][0]:.3f} ± {ms[m][1]:.3f}" for m in ("auc", "acc", "f1")]
        for ref in ("abmil", "sammil"):
            if ref == key or ref not in done:
                row.append("-")
                continue
            d, dsd, n, spread = _versus(fold, key, ref, ms)
            row.append(f"{d:+.3f} (paired sd {dsd:.3f}; {_verdict(d, spread)})")
            cell[f"vs_{ref}"] = {"diff_auc": d, "paired_sd": dsd, "n_folds": n, "spread": spread,
                                 "verdict": _verdict(d, spread)}
        ep = [f.get("best_epoch") for f in done[key]["results"]["folds"]]
        row.append(f"{done[key]['seconds'] / 60:.1f}")
        rows.append(row)
        cell.update({"auc": ms["auc"], "acc": ms["acc"], "f1": ms["f1"], "per_fold": fold[key],
                     "cmd": done[key]["cmd"], "seconds": done[key]["seconds"], "best_epochs": ep})
        data["configs"][key] = cell
    n_slides = len(json.loads((runs_root / configs[0][0] / "splits.json").read_text())[0]["test"]) \
        if (runs_root / configs[0][0] / "splits.json").is_file() else None
    cmds = "\n".join(f"{data['configs'][k]['cmd']}" for k in data["configs"])
    try:
        man = json.loads((ctx.medium_dir / "manifest.json").read_text())
        pp = man["params"]
        cohort = (f"preset {man.get('preset')}: {pp['slides']} slides, {pp['min_patches']}-{pp['max_patches']} "
                  f"patches, D={pp['dim']}, snr {pp.get('snr')}, tumour fraction {pp.get('tumour_frac')}")
    except Exception:  # noqa: BLE001 - manifest missing or other format
        cohort = "unknown parameters"
    body = [f"Store: `{store}` converted from `{ctx.medium_dir}` ({cohort}). "
            f"Protocol: {folds}-fold stratified, case-grouped CV x {core_reps} repeat(s) for AB-MIL and full SAM-MIL, "
            f"x {reps} repeat(s) for the ablations (seeds 2021..; repeat 0 has the same splits everywhere, "
            f"paired differences use the folds both configs ran), validation split "
            f"{'0.34' if ctx.quick else '0.2'} of each training part for model selection / early stopping / threshold; at most {epochs} epochs, "
            f"patience {patience}, Adam lr 1e-3 (the paper's 2e-4 needs far more epochs than this budget allows), "
            f"cosine schedule, 1 thread per fit, {jobs} fits in parallel. Every config uses the same splits. "
            "Figures: mean ± std over all test folds of the config (threshold from validation). "
            "Δ AUC = mean paired difference over the same folds; 'larger than spread' means |Δ| exceeds the "
            "larger of the two configs' fold-to-fold std."
            + (f" About {n_slides} test slides per fold." if n_slides else ""), "",
            md_table(["table", "config", "folds x repeats", "test AUC", "test acc", "test F1", "Δ AUC vs AB-MIL", "Δ AUC vs SAM-MIL",
                      "wall min"], rows), ""]
    if errors:
        body += ["Failed configs:", "", "```", *errors, "```", ""]
    body += ["Exact commands (run from the repo root; `samtrain` = `python -m trainer`):", "", "```", cmds, "```"]
    return Section("accuracy", "4. Accuracy (medium preset)", "\n".join(body), data,
                   error=("failed fits:\n" + "\n".join(errors)) if errors else None)


def tabulate(runs_root: Path) -> str:
    """Markdown table of every finished ``samtrain fit`` run under ``runs_root`` (sub-folder = config key).

    Paired Δ AUC against the sub-folders ``abmil`` and ``sammil`` when present (over the folds both ran).
    """
    res = {d.name: json.loads((d / "results.json").read_text())
           for d in sorted(runs_root.iterdir()) if (d / "results.json").is_file()}
    fold = {k: {m: _per_fold(v, m) for m in ("auc", "acc", "f1")} for k, v in res.items()}
    rows = []
    for k in res:
        ms = {m: _ms(list(fold[k][m].values())) for m in ("auc", "acc", "f1")}
        row = [k, str(len(fold[k]["auc"]))] + [f"{ms[m][0]:.3f} ± {ms[m][1]:.3f}" for m in ("auc", "acc", "f1")]
        for ref in ("abmil", "sammil"):
            if ref == k or ref not in res:
                row.append("-")
                continue
            d, dsd, n, spread = _versus(fold, k, ref, ms)
            row.append(f"{d:+.3f} (paired sd {dsd:.3f}, {n} folds; {_verdict(d, spread)})")
        rows.append(row)
    return md_table(["run", "test folds", "test AUC", "test acc", "test F1", "Δ AUC vs abmil", "Δ AUC vs sammil"],
                    rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--medium", type=Path, default=Path("/tmp/c2s_bench_medium"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-epochs", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--core-repeats", type=int, default=None)
    ap.add_argument("--tabulate", type=Path, default=None, help="only tabulate finished runs in this folder")
    a = ap.parse_args(argv)
    if a.tabulate:
        print(tabulate(a.tabulate))
        return 0
    ctx = Ctx(out=Path("bench/out"), medium_dir=a.medium,
              extra={"accuracy_repeats": a.repeats, "max_epochs": a.max_epochs, "jobs": a.jobs,
                     "core_repeats": a.core_repeats})
    s = run(ctx)
    print(s.body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

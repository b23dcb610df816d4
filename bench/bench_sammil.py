"""SAM-MIL vs AB-MIL and the paper's ablations on the project's cohorts, with paired intervals.

Every fit of a suite uses the same store, the same ``--seed`` (hence the same splits) and the same common
arguments; the paired comparison is ``samtrain compare`` (95 % bootstrap interval of the mean per-fold
difference over folds x repeats). Fits already finished are reused (``samtrain fit`` resumes), so a suite
can be stopped and re-run.

    python bench/bench_sammil.py demo      --out /tmp/acc     # demo cohort, SAM-MIL vs AB-MIL, 5 folds x 3 repeats
    python bench/bench_sammil.py ablations --out /tmp/acc     # demo cohort, Tables 2-4 ablations, 5 folds x 1
    python bench/bench_sammil.py rare     --out /tmp/acc      # 72 slides of 5k-15k patches, rare lesions
    python bench/bench_sammil.py realsize --out /tmp/acc      # 60 slides of 5k-50k patches
    python bench/bench_sammil.py medium   --out /tmp/acc      # fixtures' medium preset (smaller bags), 5 x 3
    python bench/bench_sammil.py medium-ablations --out /tmp/acc   # the ablations on it, 5 x 1

Each suite writes ``OUT/<suite>/section.md`` (tables + the commands).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SAMTRAIN = str(BIN / "samtrain")
CLAM2SAM = str(BIN / "clam2sam")

ABLATIONS = [
    ("sammil", "SAM-MIL (defaults)", ["--model", "sam-mil"]),
    ("abmil", "AB-MIL (defaults)", ["--model", "abmil"]),
    ("t2_no_gf", "Table 2: w/o group features", ["--model", "sam-mil", "--no-group-features"]),
    ("t2_no_sg2m", "Table 2/3: w/o SG2M (--mask none)", ["--model", "sam-mil", "--mask", "none"]),
    ("t2_no_pb", "Table 2: w/o pseudo-bags (--alpha 0)", ["--model", "sam-mil", "--alpha", "0"]),
    ("t2_con", "Table 2: with consistency (--beta 0.1)", ["--model", "sam-mil", "--beta", "0.1"]),
    ("no_maxinst", "w/o max-instance term (--max-instance-weight 0)", ["--model", "sam-mil",
                                                                      "--max-instance-weight", "0"]),
    ("t3_random", "Table 3: mask random (all tokens)", ["--model", "sam-mil", "--mask", "random"]),
    ("t3_nongroup", "Table 3: mask non-group", ["--model", "sam-mil", "--mask", "non-group"]),
    ("t4_constant", "Table 4: ratio constant", ["--model", "sam-mil", "--ratio-fn", "constant"]),
    ("t4_linear", "Table 4: ratio linear", ["--model", "sam-mil", "--ratio-fn", "linear"]),
]
CORE = ABLATIONS[:2]
# the medium preset with smaller bags (200-500 patches) so that 2 models x 5 folds x 3 repeats fit on 2 cores
MEDIUM_OVERRIDES = ["--min-patches", "200", "--max-patches", "500", "--snr", "6", "--tumour-frac", "0.02,0.06"]


def sh(cmd: list[str], log) -> None:
    log(f"$ {shlex.join(cmd)}")
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    log(f"  ({time.perf_counter() - t:.0f} s)")
    return p


def store_for(suite: str, work: Path, log) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    if suite in ("demo", "ablations", "tune"):
        store = work / "demo.zarr"
        if not (store / "zarr.json").exists():
            sh([CLAM2SAM, "convert", str(ROOT / "fixtures/demo"), "--segments-dir", str(ROOT / "fixtures/demo/segments"),
                "--dataset-csv", str(ROOT / "fixtures/demo/dataset.csv"), "--out", str(store), "-q"], log)
        return store
    if suite in ("medium", "medium-ablations"):
        arch, store = work / "medium_archive", work / "medium.zarr"
        if not (store / "zarr.json").exists():
            sh([sys.executable, str(ROOT / "fixtures/make_fixtures.py"), "--preset", "medium", "--out", str(arch),
                *MEDIUM_OVERRIDES, "--recreate", "--quiet"], log)
            sh([CLAM2SAM, "convert", str(arch), "--segments-dir", str(arch / "segments"), "--dataset-csv",
                str(arch / "dataset.csv"), "--out", str(store), "-q"], log)
        return store
    store = work / f"{suite}.zarr"
    if not (store / "zarr.json").exists():
        sh([sys.executable, str(ROOT / "fixtures/cohorts.py"), suite, str(store)], log)
    return store


SUITES = {
    # name: (fits, common args); "demo" = the core pair at 5 x 3, "ablations" = every ablation at 5 x 1
    "demo": (CORE, ["--folds", "5", "--repeats", "3", "--max-epochs", "20", "--lr", "1e-3", "--cache"]),
    "ablations": (ABLATIONS, ["--folds", "5", "--repeats", "1", "--max-epochs", "20", "--lr", "1e-3", "--cache"]),
    "medium": (CORE, ["--folds", "5", "--repeats", "3", "--max-epochs", "20", "--lr", "1e-3", "--cache"]),
    "medium-ablations": (ABLATIONS, ["--folds", "5", "--repeats", "3", "--max-epochs", "20", "--lr", "1e-3",
                                     "--cache"]),
    "rare": (CORE, ["--folds", "3", "--max-epochs", "20", "--cache"]),
    "realsize": (CORE, ["--folds", "3", "--max-epochs", "20", "--cache"]),
}


def run_suite(suite: str, out: Path, extra: list[str], log, jobs: int = 1) -> str:
    work = out / suite
    store = store_for(suite, out / "stores", log)
    fits, common = SUITES[suite]
    common = common + ["--seed", "2021", "--threads", "1", "-q"] + extra
    rows, cmds, todo = [], [], []
    for key, label, args in fits:
        run = work / key
        cmd = [SAMTRAIN, "fit", str(store), "--out", str(run), *args, *common]
        cmds.append(shlex.join(["samtrain", *cmd[1:]]))
        if not (run / "results.json").exists():
            todo.append(cmd)
    with ThreadPoolExecutor(max(1, jobs)) as pool:                 # fits are independent processes
        list(pool.map(lambda c: sh(c, log), todo))
    for key, label, args in fits:
        r = json.loads((work / key / "results.json").read_text())
        a = r["summary"]["test"]["auc"]
        rows.append((key, label, a, r.get("flagged_folds", []), r["summary"].get("test_auc_pooled")))
    lines = [f"### {suite}: store `{store.name}`", "", "| run | test AUC mean ± sd | median [IQR] | flagged folds |",
             "|---|---|---|---|"]
    for key, label, a, flagged, _ in rows:
        lines.append(f"| {label} | {a['mean']:.3f} ± {a['std']:.3f} | {a['median']:.3f} [{a['q1']:.3f}, {a['q3']:.3f}] "
                     f"| {len(flagged)} {('(' + ', '.join(flagged) + ')') if flagged else ''} |")
    # paired comparisons with the project's tool
    pairs = [("sammil", "abmil")] + [(k, "sammil") for k, _, _ in fits[2:]]
    lines += ["", "Paired differences (A - B) per fold, 95 % bootstrap interval over folds x repeats "
              "(`samtrain compare A B --json`):", "", "| A | B | mean Δ test AUC | 95 % CI | A better / folds |",
              "|---|---|---|---|---|"]
    for a_key, b_key in pairs:
        p = sh([SAMTRAIN, "compare", str(work / a_key), str(work / b_key), "--json", "--out",
                str(work / f"compare_{a_key}_vs_{b_key}")], log)
        res = json.loads(p.stdout)
        d = res["comparisons"][0]["metrics"]["test AUC"]
        lines.append(f"| {a_key} | {b_key} | {d['mean_diff']:+.3f} | [{d['lo']:+.3f}, {d['hi']:+.3f}] | "
                     f"{d['wins']} / {d['n']} |")
    if suite in ("demo", "ablations"):
        make = (f"clam2sam convert fixtures/demo --segments-dir fixtures/demo/segments --dataset-csv "
                f"fixtures/demo/dataset.csv --out {store} -q")
    elif suite in ("medium", "medium-ablations"):
        make = (f"python fixtures/make_fixtures.py --preset medium --out ARCHIVE {' '.join(MEDIUM_OVERRIDES)} && "
                f"clam2sam convert ARCHIVE --segments-dir ARCHIVE/segments --dataset-csv ARCHIVE/dataset.csv "
                f"--out {store}")
    else:
        make = f"python fixtures/cohorts.py {suite} {store}"
    lines += ["", f"Commands (run from the repository root; `python bench/bench_sammil.py {suite} --out {out}` runs "
              "them all and the comparisons):", "", "```bash", make, *cmds, "```"]
    text = "\n".join(lines) + "\n"
    (work / "section.md").write_text(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("suite", choices=list(SUITES))
    ap.add_argument("--out", default="/tmp/acc")
    ap.add_argument("--jobs", type=int, default=1, help="fits run at the same time (each uses --threads 1)")
    ap.add_argument("extra", nargs="*", help="extra samtrain fit arguments for every fit (after --)")
    a, rest = ap.parse_known_args(argv)      # everything after "--" goes to every fit
    if rest and rest[0] == "--":
        rest = rest[1:]
    a.extra = [*a.extra, *rest]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = (out / f"{a.suite}.log").open("a")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)
        print(msg, file=logf, flush=True)

    print(run_suite(a.suite, out, a.extra, log, a.jobs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

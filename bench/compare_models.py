"""Table-1 / Table-7 style comparison: every registered model with and without segment group features.

Usage (from the repository root)::

    nice .venv/bin/python bench/compare_models.py STORE OUT --folds 3 --epochs 20
    nice .venv/bin/python bench/compare_models.py STORE OUT --models abmil,sam-mil --folds 5 --repeats 3

Each (model, group features) pair is one ``samtrain fit`` run (``OUT/runs/<model>[+gf]``) with the same
seed, hence the same case-grouped splits; re-running resumes finished runs. Writes ``OUT/comparison.md``
(Table 1: test AUC / accuracy / F1 / balanced accuracy, mean +/- std over folds, at the threshold chosen
on validation; Table 7: the change brought by the group features) and ``OUT/comparison.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.config import TrainConfig  # noqa: E402
from trainer.models import list_models  # noqa: E402
from trainer.run import run_fit  # noqa: E402

METRICS = ("auc", "acc", "f1", "bal_acc")


def localisation(run_dir: Path, store: str, gt_dir: Path) -> float | None:
    """Mean over tumour TEST slides of the share of true tumour patches among the k highest-scored
    patches, k = the slide's number of tumour patches (R-precision; chance = the tumour fraction).

    Each test slide is scored by the checkpoint of the fold that held it out. Needs the synthetic
    cohort's ``ground_truth/<slide>.npz`` (``coords``, ``tumour``), matched to the store by coords.
    """
    import numpy as np

    from clam2sam.store.writer import open_store
    from trainer.data import read_bag
    from trainer.predict import load_ensemble, predict_bag

    reader = open_store(store)
    hits = []
    for split in json.loads((run_dir / "splits.json").read_text()):
        ens = load_ensemble(run_dir / f"fold_{split['name']}")
        for sid in split["test"]:
            f = gt_dir / f"{sid}.npz"
            if not f.is_file():
                continue
            gt = np.load(f)
            truth = {tuple(c): bool(t) for c, t in zip(gt["coords"].tolist(), gt["tumour"])}
            tum = np.array([truth.get(tuple(c), False) for c in reader.read_array(sid, "coords").tolist()])
            k = int(tum.sum())
            if k == 0:
                continue
            scores = predict_bag(ens, read_bag(reader, sid, 0))["scores"]
            hits.append(float(tum[np.argsort(-scores, kind="stable")[:k]].mean()))
    return float(np.mean(hits)) if hits else None


def run_name(model: str, gf: bool) -> str:
    return f"{model}+gf" if gf else model


def fmt(ms: dict | None) -> str:
    if not ms or not ms.get("n") or not math.isfinite(ms["mean"]):
        return "n/a"
    return f"{100 * ms['mean']:.2f} ± {100 * ms['std']:.2f}"


def table1(rows: list[dict]) -> str:
    loc = any(r.get("localisation") is not None for r in rows)
    head = "| model | group features | test AUC | test acc | test F1 | test bal. acc | epochs (mean) | fit s |"
    out = [head + (" tumour top-k hit rate |" if loc else ""), "|---|---|---|---|---|---|---|---|" + ("---|" if loc else "")]
    for r in rows:
        s = r["summary"]["test"]
        line = (f"| {r['model']} | {'on' if r['gf'] else 'off'} | " + " | ".join(fmt(s.get(k)) for k in METRICS)
                + f" | {r['epochs']:.1f} | {r['seconds']:.0f} |")
        if loc:
            v = r.get("localisation")
            line += f" {'n/a' if v is None else f'{100 * v:.1f}'} |"
        out.append(line)
    return "\n".join(out)


def table7(rows: list[dict]) -> str:
    by = {(r["model"], r["gf"]): r["summary"]["test"] for r in rows}
    out = ["| model | AUC without → with group features | F1 without → with | Δ AUC | Δ F1 |", "|---|---|---|---|---|"]
    for m in dict.fromkeys(r["model"] for r in rows):
        if (m, False) not in by or (m, True) not in by:
            continue
        a, b = by[(m, False)], by[(m, True)]
        d = lambda k: 100 * (b[k]["mean"] - a[k]["mean"])  # noqa: E731
        out.append(f"| {m} | {fmt(a['auc'])} → {fmt(b['auc'])} | {fmt(a['f1'])} → {fmt(b['f1'])} | "
                   f"{d('auc'):+.2f} | {d('f1'):+.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store", help="clam2sam store with slide labels")
    ap.add_argument("out", type=Path, help="output folder (runs/, comparison.md, comparison.json)")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20, help="--max-epochs of every fit")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--models", default="all", help="comma-separated registry names, or 'all'")
    ap.add_argument("--group-features", choices=("both", "on", "off"), default="both")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--val-frac", type=float, default=0.2, help="validation share of each training part")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--labels", help="labels CSV (default: the store's slide labels)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ground-truth", type=Path, help="synthetic cohort's ground_truth/ folder: adds the "
                    "tumour top-k hit rate of the per-patch scores on test slides")
    ap.add_argument("--hidden-dim", type=int, default=512, help="E of every model (512 = the paper)")
    ap.add_argument("--attn-dim", type=int, default=128)
    args = ap.parse_args(argv)
    models = list_models() if args.models == "all" else [m.strip() for m in args.models.split(",")]
    gfs = {"both": (False, True), "on": (True,), "off": (False,)}[args.group_features]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in models:
        for gf in gfs:
            name = run_name(model, gf)
            cfg = TrainConfig(store=str(args.store), out=str(args.out / "runs" / name), labels=args.labels, model=model,
                              group_features=gf, folds=args.folds, repeats=args.repeats, max_epochs=args.epochs,
                              patience=args.patience, val_frac=args.val_frac, lr=args.lr, seed=args.seed, threads=args.threads, cache=True,
                              hidden_dim=args.hidden_dim, attn_dim=args.attn_dim, quiet=True)
            t0 = time.perf_counter()
            res = run_fit(cfg)
            sec = sum(f.get("train_seconds", 0.0) for f in res["folds"])
            rows.append({"model": model, "gf": gf, "summary": res["summary"], "seconds": sec,
                         "wall_seconds": time.perf_counter() - t0,
                         "epochs": sum(f["epochs_run"] for f in res["folds"]) / len(res["folds"])})
            if args.ground_truth:
                rows[-1]["localisation"] = localisation(Path(cfg.out), str(args.store), args.ground_truth)
            auc = res["summary"]["test"]["auc"]
            print(f"{name:18s} test AUC {fmt(auc)}  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    n = res["n_slides"]
    md = (f"Store `{args.store}`: {n} slides {res['class_counts']}; {args.folds}-fold x {args.repeats} "
          f"case-grouped CV, max {args.epochs} epochs (patience {args.patience}), Adam lr {args.lr}, seed {args.seed}, "
          f"hidden dim {args.hidden_dim}, attention dim {args.attn_dim}. "
          "Test figures at the threshold chosen on validation; mean ± std over folds, in %.\n\n"
          "Table 1 style (all models)\n\n" + table1(rows) + "\n\nTable 7 style (effect of the group features)\n\n"
          + table7(rows) + "\n")
    (args.out / "comparison.md").write_text(md)
    (args.out / "comparison.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                          "rows": rows}, indent=1) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Small run directories written directly, in the layout ``samtrain fit`` writes (trainer/run.py docstring):
config.json, splits.json, fold_<split>/{metrics.csv, predictions.csv, done.json}, results.json.

Predictions are seeded draws: p(positive) = sigmoid(signal * (+1 | -1) + noise), so a larger ``signal``
gives a better run; fold metrics come from the trainer's own evaluate_fold.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from trainer.metrics import evaluate_fold, mean_std

FIELDS = ("epoch", "lr", "train_loss", "train_ce", "train_pb", "train_con", "val_loss", "val_auc", "improved",
          "train_seconds")


def make_splits(n_slides: int, folds: int, repeats: int, split_seed: int) -> list[dict]:
    ids = [f"slide_{i:03d}" for i in range(n_slides)]
    out = []
    for r in range(repeats):
        perm = np.random.default_rng(split_seed + r).permutation(n_slides)
        chunks = np.array_split(perm, folds)
        for k in range(folds):
            rest = np.concatenate([c for j, c in enumerate(chunks) if j != k])
            n_val = max(2, len(rest) // 5)
            out.append({"name": f"r{r}_f{k}", "repeat": r, "fold": k, "train": [ids[i] for i in rest[n_val:]],
                        "val": [ids[i] for i in rest[:n_val]], "test": [ids[i] for i in chunks[k]]})
    return out


def _probs(y: np.ndarray, C: int, signal: float, rng) -> np.ndarray:
    if C == 2:
        z = signal * (2 * y - 1) + rng.normal(size=len(y))
        p1 = 1.0 / (1.0 + np.exp(-z))
        return np.stack([1 - p1, p1], 1)
    logits = rng.normal(size=(len(y), C))
    logits[np.arange(len(y)), y] += signal
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def make_fake_run(path, *, seed: int = 0, signal: float = 1.5, folds: int = 3, repeats: int = 1, n_slides: int = 36,
                  split_seed: int = 0, classes=("normal", "tumor"), model: str = "abmil", epochs: int = 4,
                  flags: dict | None = None, extra: dict | None = None, relabel: dict | None = None) -> Path:
    """Write a finished fake run to ``path``.

    Args:
        flags: ``{split name: flags}`` recorded as ``fold['flags']``.
        extra: keys added to results.json (e.g. ``sg2m_ratio_spread``).
        relabel: ``{slide id: class}`` overriding the true class of some slides.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    classes = list(classes)
    C = len(classes)
    ids = [f"slide_{i:03d}" for i in range(n_slides)]
    y_of = {s: i % C for i, s in enumerate(ids)}
    for s, c in (relabel or {}).items():
        y_of[s] = classes.index(c)
    splits = make_splits(n_slides, folds, repeats, split_seed)
    (path / "splits.json").write_text(json.dumps(splits, indent=1) + "\n")
    cfg = {"model": model, "folds": folds, "repeats": repeats, "seed": split_seed, "max_epochs": epochs,
           "group_features": model == "sam-mil", "lr": 1e-3}
    (path / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    rng = np.random.default_rng(seed)
    results_folds = []
    for s in splits:
        d = path / f"fold_{s['name']}"
        d.mkdir(exist_ok=True)
        parts = {}
        for part in ("val", "test"):
            y = np.array([y_of[i] for i in s[part]])
            parts[part] = (s[part], y, _probs(y, C, signal, rng))
        with (d / "predictions.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["split", "slide_id", "label", *[f"p_{c}" for c in classes]])
            for part, (sid, y, p) in parts.items():
                for a, b, row in zip(sid, y, p):
                    w.writerow([part, a, classes[int(b)], *[f"{v:.6g}" for v in row]])
        best = int(rng.integers(0, epochs))
        with (d / "metrics.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            for e in range(epochs):
                ce = 0.7 * np.exp(-0.4 * e)
                w.writerow({"epoch": e, "lr": 1e-3, "train_loss": ce + 0.3 * ce + 0.01, "train_ce": ce,
                            "train_pb": ce, "train_con": 0.01 + 0.001 * e, "val_loss": 0.6 - 0.05 * e + 0.02 * e * e,
                            "val_auc": min(1.0, 0.6 + 0.1 * e), "improved": int(e == best), "train_seconds": 0.5})
        # re-read the rounded probabilities so the fold figures match predictions.csv exactly
        rows = list(csv.DictReader((d / "predictions.csv").open()))
        got = {part: (np.array([classes.index(r["label"]) for r in rows if r["split"] == part]),
                      np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows if r["split"] == part]))
               for part in ("val", "test")}
        res = evaluate_fold(got["val"][0], got["val"][1], got["test"][0], got["test"][1])
        res.update({"split": s["name"], "repeat": s["repeat"], "fold": s["fold"], "best_epoch": best,
                    "epochs_run": epochs, "early_stopped": False, "n_train": len(s["train"]), "n_val": len(s["val"]),
                    "n_test": len(s["test"]), "train_seconds": 0.5 * epochs})
        if flags and s["name"] in flags:
            res["flags"] = flags[s["name"]]
        (d / "done.json").write_text(json.dumps(res, indent=2) + "\n")
        results_folds.append(res)
    summary = {"test": {k: mean_std([f["test"][k] for f in results_folds]) for k in ("auc", "acc", "f1", "bal_acc")},
               "val": {"auc": mean_std([f["val"]["auc"] for f in results_folds])}}
    ys = np.array([y_of[i] for i in ids])
    results = {"config": cfg, "classes": classes, "n_slides": n_slides,
               "class_counts": {c: int((ys == i).sum()) for i, c in enumerate(classes)}, "folds": results_folds,
               "summary": summary, **(extra or {})}
    (path / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return path


def png_pixels(path) -> np.ndarray:
    """``(H, W, 3)`` float RGB in [0, 1] of a PNG."""
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0


def assert_picture(path, min_bytes: int = 5000, min_std: float = 0.05) -> np.ndarray:
    """A real, non-blank PNG: large enough, more than a few colours, pixel spread above ``min_std``."""
    path = Path(path)
    assert path.is_file(), path
    assert path.stat().st_size >= min_bytes, (path, path.stat().st_size)
    px = png_pixels(path)
    assert px.shape[0] >= 100 and px.shape[1] >= 100, px.shape
    assert px.std() >= min_std, (path, px.std())
    assert len(np.unique(px.reshape(-1, 3), axis=0)) >= 8, path
    return px

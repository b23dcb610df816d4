"""Inference with a trained run: slide probabilities, predicted labels and per-patch scores.

``SOURCE`` is a run directory (every ``fold_*/best.pt``: an ensemble), one fold directory, or one
checkpoint file. For an ensemble the slide probability is the mean of the folds' probabilities and the
per-patch scores are the mean of the folds' scores.

Decision threshold (binary tasks): each fold's threshold is the one its run chose on VALIDATION
(``done.json``; else recomputed from the validation rows of ``predictions.csv``). An ensemble uses the
mean of its folds' thresholds. Multi-class tasks use the arg-max.

Output directory::

    OUT/predictions.csv        slide_id, label (when known), p_<class>..., prob, pred, threshold,
                               n_patches, p_<pos>@<fold>...  (one row per slide)
    OUT/scores.zarr/           root attrs: model, classes, members, threshold, score_kind
      slides/<key>/            attrs: slide_id, prob, pred, label, patch_size_level0, n_patches
        scores        (N,)     float32  attention / instance scores, row i = the store's coords[i]
        fold_scores   (F, N)   float32  the same per fold
        coords        (N, 2)   int64    copy of the store's level-0 coords (same order)
        segment_ids   (N,)     int32    copy of the store's segment ids (outlines)
        group_scores  (S,)     float32  scores of the segment tokens (group features on only)
        patch_prob    (N,)     float32  with ``patch_probs``: the probability of the score class for a
                                        bag holding only that patch (tumour probability)
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clam2sam.errors import UsageError
from clam2sam.ids import slide_key
from clam2sam.store.writer import open_store
from trainer.checkpoint import load_checkpoint
from trainer.config import TrainConfig
from trainer.cohort import read_labels_csv
from trainer.data import read_bag
from trainer.metrics import youden_threshold
from trainer.models import build_model, model_class


@dataclass
class Member:
    """One fold's model with the threshold chosen on its validation split (None: unknown / multi-class)."""

    name: str
    model: torch.nn.Module
    threshold: float | None


@dataclass
class Ensemble:
    members: list[Member]
    classes: list[str]
    in_dim: int
    cfg: TrainConfig

    @property
    def threshold(self) -> float | None:
        """Mean of the members' validation thresholds (binary); None for multi-class tasks."""
        t = [m.threshold for m in self.members if m.threshold is not None]
        return float(np.mean(t)) if len(self.classes) == 2 and t else None


# ------------------------------------------------------------------------------------------ loading

def fold_threshold(fold_dir: Path) -> float | None:
    """The validation threshold of a finished fold (``done.json``, else its validation predictions)."""
    done = fold_dir / "done.json"
    if done.is_file():
        thr = json.loads(done.read_text()).get("val", {}).get("threshold")
        if thr is not None:
            return float(thr)
    pred = fold_dir / "predictions.csv"
    if pred.is_file():
        rows = [r for r in csv.DictReader(pred.open()) if r["split"] == "val"]
        cols = [c for c in (rows[0] if rows else {}) if c.startswith("p_")]
        if rows and len(cols) == 2:
            pos = cols[1][2:]
            return youden_threshold(np.array([r["label"] == pos for r in rows], int),
                                    np.array([float(r[cols[1]]) for r in rows]))
    return None


def load_member(path: Path, device="cpu") -> tuple[Member, dict]:
    """Model of one checkpoint (eval mode) and the checkpoint's ``extra`` (classes, in_dim, split)."""
    ck = load_checkpoint(path)
    cfg = TrainConfig.from_dict(ck["config"])
    extra = ck.get("extra", {})
    if "classes" not in extra or "in_dim" not in extra:
        raise UsageError("checkpoint lacks classes / in_dim (not written by samtrain fit?)", path=path)
    model = build_model(cfg.model, int(extra["in_dim"]), len(extra["classes"]), cfg)
    model.load_state_dict(ck["model"])
    model.to(device).eval()
    name = extra.get("split") or path.parent.name
    return Member(str(name), model, fold_threshold(path.parent)), {**extra, "cfg": cfg}


def load_ensemble(source: str | Path, device="cpu") -> Ensemble:
    """Load a run directory (all folds), a fold directory or a checkpoint file.

    Raises:
        UsageError: nothing to load, or folds that disagree on model, classes or feature dim.
    """
    src = Path(source)
    if src.is_file():
        paths = [src]
    elif (src / "best.pt").is_file():
        paths = [src / "best.pt"]
    else:
        paths = sorted(src.glob("fold_*/best.pt"))
    if not paths:
        raise UsageError("no checkpoint found", path=src,
                         fix="pass a run directory of `samtrain fit` (with fold_*/best.pt) or a .pt file")
    members, metas = zip(*(load_member(p, device) for p in paths))
    first = metas[0]
    for p, m in zip(paths, metas):
        if m["classes"] != first["classes"] or m["in_dim"] != first["in_dim"] or m["cfg"].model != first["cfg"].model:
            raise UsageError("checkpoints of one ensemble disagree on model / classes / feature dim", path=p)
    return Ensemble(list(members), list(first["classes"]), int(first["in_dim"]), first["cfg"])


# ---------------------------------------------------------------------------------------- inference

@torch.no_grad()
def predict_bag(ens: Ensemble, bag, patch_probs: bool = False) -> dict:
    """Ensemble outputs for one bag: ``fold_probs (F, C)``, ``prob (C,)``, ``fold_scores (F, N)``,
    ``scores (N,)``, ``group_scores (S,) | None``, ``patch_prob (N,) | None``."""
    N = bag.n_patches
    probs, scores, groups, pp = [], [], [], []
    for m in ens.members:
        model = m.model
        h = model.embed(model.tokens(bag))                   # (T, E)
        c = model.instance_cache(h)
        out = model.head(h, c)
        probs.append(torch.softmax(out["logits"].float(), 1)[0].cpu().numpy())
        s = out["scores"].float().cpu().numpy()              # (T,)
        scores.append(s[:N])
        groups.append(s[N:])
        if patch_probs:
            k = 1 if len(ens.classes) == 2 else int(out["logits"].argmax())
            il = model.instance_logits(h[:N], None if c is None else c[:N])   # (N, C) bags of one patch
            pp.append(torch.softmax(il.float(), 1)[:, k].cpu().numpy())
    fold_scores = np.stack(scores).astype(np.float32)
    g = np.stack(groups).mean(0).astype(np.float32) if groups[0].size else None
    return {"fold_probs": np.stack(probs), "prob": np.mean(probs, 0), "fold_scores": fold_scores,
            "scores": fold_scores.mean(0), "group_scores": g,
            "patch_prob": np.mean(pp, 0).astype(np.float32) if patch_probs else None}


def decide(ens: Ensemble, prob: np.ndarray) -> int:
    """Predicted class index: ``p(positive) >= threshold`` (binary), arg-max otherwise."""
    thr = ens.threshold
    if len(ens.classes) == 2:
        return int(prob[1] >= (0.5 if thr is None else thr))
    return int(np.argmax(prob))


def slide_labels(reader, slide_ids: list[str], labels_csv: str | None) -> dict[str, str | None]:
    """Label string per slide: the ``--labels`` CSV wins, else the store's slide attr (None when absent)."""
    table = read_labels_csv(labels_csv) if labels_csv else {}
    out = {}
    for sid in slide_ids:
        lab = table[sid][0] if sid in table else reader.slide_attrs(sid).get("label")
        out[sid] = None if lab is None or str(lab) == "" else str(lab)
    return out


def run_predict(source: str | Path, store: str | Path, out: str | Path, *, labels: str | None = None,
                slides: list[str] | None = None, patch_probs: bool = False, device: str = "cpu",
                quiet: bool = False) -> list[dict]:
    """Predict every (or the selected) slide of ``store``; write ``predictions.csv`` and ``scores.zarr``.

    Returns one dict per slide (slide_id, label, prob (C,), fold_probs, pred, ...).
    """
    import zarr

    from trainer.report_predict import progress_bar

    ens = load_ensemble(source, device)
    reader = open_store(store)
    if reader.feature_dim and int(reader.feature_dim) != ens.in_dim:
        raise UsageError(f"the store's features have D={reader.feature_dim}, the model expects {ens.in_dim}",
                         path=store, fix="use the store the model was trained on (same encoder)")
    ids = reader.slide_ids()
    if slides:
        missing = sorted(set(slides) - set(ids))
        if missing:
            raise UsageError(f"slide(s) not in the store: {', '.join(missing[:5])}", path=store)
        ids = [s for s in ids if s in set(slides)]
    labs = slide_labels(reader, ids, labels)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = zarr.open_group(str(out / "scores.zarr"), mode="w")
    root.attrs.update({"model": ens.cfg.model, "group_features": bool(ens.cfg.group_features),
                       "classes": ens.classes, "members": [m.name for m in ens.members],
                       "threshold": ens.threshold, "source": str(source), "store": str(store),
                       "score_kind": model_class(ens.cfg.model).score_kind})
    sg = root.create_group("slides")
    rows = []
    with progress_bar("predict", len(ids), quiet) as advance:
        for sid in ids:
            bag = read_bag(reader, sid, 0).to(device)
            r = predict_bag(ens, bag, patch_probs)
            pred = decide(ens, r["prob"])
            arrays = {"scores": r["scores"], "fold_scores": r["fold_scores"],
                      "coords": reader.read_array(sid, "coords").astype(np.int64),
                      "segment_ids": bag.segment_ids.cpu().numpy().astype(np.int32)}
            if r["group_scores"] is not None:
                arrays["group_scores"] = r["group_scores"]
            if r["patch_prob"] is not None:
                arrays["patch_prob"] = r["patch_prob"]
            g = sg.create_group(slide_key(sid))
            for name, a in arrays.items():
                g.create_array(name, data=np.ascontiguousarray(a))
            attrs = reader.slide_attrs(sid)
            g.attrs.update({"slide_id": sid, "prob": [float(p) for p in r["prob"]], "pred": ens.classes[pred],
                            "label": labs[sid], "n_patches": bag.n_patches,
                            "patch_size_level0": attrs.get("patch_size_level0")})
            rows.append({"slide_id": sid, "label": labs[sid], "prob": r["prob"], "fold_probs": r["fold_probs"],
                         "pred": pred, "n_patches": bag.n_patches})
            advance()
    write_predictions_csv(out / "predictions.csv", rows, ens)
    return rows


def write_predictions_csv(path: Path, rows: list[dict], ens: Ensemble) -> None:
    C = ens.classes
    pos = C[1] if len(C) == 2 else None
    head = ["slide_id", "label", *[f"p_{c}" for c in C], "prob", "pred", "threshold", "n_patches"]
    if pos is not None and len(ens.members) > 1:
        head += [f"p_{pos}@{m.name}" for m in ens.members]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for r in rows:
            p = r["prob"]
            line = [r["slide_id"], r["label"] or "", *[f"{v:.6g}" for v in p],
                    f"{(p[1] if pos is not None else p.max()):.6g}", C[r["pred"]],
                    "" if ens.threshold is None else f"{ens.threshold:.6g}", r["n_patches"]]
            if pos is not None and len(ens.members) > 1:
                line += [f"{fp[1]:.6g}" for fp in r["fold_probs"]]
            w.writerow(line)

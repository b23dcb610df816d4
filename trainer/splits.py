"""Cross-validation splits: stratified K-fold grouped by case, repeated, with a validation carve-out.

Every split is a triple of disjoint slide-index arrays (train, val, test). No case (patient) ever
appears in two parts of one split. The validation part is carved from the training part of each fold
(stratified and grouped as well), so model selection and the decision threshold never see test data.
"""
from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from clam2sam.errors import UsageError
from clam2sam.ids import normalise_slide_id


@dataclass
class Split:
    """One fold of one repeat. Index arrays point into the cohort's slide list."""

    repeat: int
    fold: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @property
    def name(self) -> str:
        return f"r{self.repeat}_f{self.fold}"


def _grouped_kfold(y: np.ndarray, groups: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Test-index arrays of a stratified, grouped K-fold (k clipped to the number of groups)."""
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise UsageError(f"{k} folds need at least {k} cases, the cohort has {n_groups}",
                         fix="lower --folds or add slides")
    # StratifiedGroupKFold warns when a class has fewer members than folds; the split stays valid.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        skf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        try:
            return [te for _, te in skf.split(np.zeros(len(y)), y, groups)]
        except ValueError as e:  # e.g. a class with fewer members than folds
            raise UsageError(f"cannot make {k} stratified folds from {len(y)} slides ({e})",
                             fix="lower --folds, raise --val-frac (fewer validation folds) or add slides") from e


def carve_validation(train: np.ndarray, y: np.ndarray, groups: np.ndarray, val_frac: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a training part into (train, val), stratified by label and grouped by case.

    The number of validation folds is ``round(1 / val_frac)``; the first fold becomes validation.
    """
    k = max(2, int(round(1.0 / val_frac)))
    k = min(k, len(np.unique(groups[train])))
    if k < 2:
        raise UsageError("training part has fewer than 2 cases: cannot carve a validation split",
                         fix="use fewer folds or more slides")
    val_local = _grouped_kfold(y[train], groups[train], k, seed)[0]
    mask = np.zeros(len(train), bool)
    mask[val_local] = True
    return np.sort(train[~mask]), np.sort(train[mask])


def make_cv_splits(y: np.ndarray, case_ids: list[str], *, folds: int = 5, repeats: int = 1,
                   val_frac: float = 0.2, seed: int = 2021) -> list[Split]:
    """Repeated stratified grouped K-fold with a validation split carved from each training part.

    Args:
        y: ``(n,)`` class indices.
        case_ids: ``n`` case (patient) ids; slides of one case always land in the same part.
        folds, repeats: K and R; repeat r uses seed ``seed + r``.
        val_frac: fraction of each training part used for validation.

    Returns:
        ``repeats * folds`` splits, repeat-major.
    """
    y = np.asarray(y)
    groups = np.unique(np.asarray(case_ids, dtype=object).astype(str), return_inverse=True)[1]
    out = []
    all_idx = np.arange(len(y))
    for r in range(repeats):
        for f, test in enumerate(_grouped_kfold(y, groups, folds, seed + r)):
            train = np.setdiff1d(all_idx, test)
            tr, va = carve_validation(train, y, groups, val_frac, seed + 1000 * (r + 1) + f)
            out.append(Split(r, f, tr, va, np.sort(test)))
    return out


def check_no_case_leak(split: Split, case_ids: list[str]) -> None:
    """Raise UsageError when a case appears in two parts of a split."""
    cases = np.asarray(case_ids, dtype=object)
    parts = {"train": set(cases[split.train]), "val": set(cases[split.val]), "test": set(cases[split.test])}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = parts[a] & parts[b]
        if both:
            raise UsageError(f"split {split.name}: case(s) {sorted(both)[:5]} are in both {a} and {b}",
                             fix="splits must be grouped by case id")


def read_clam_splits(splits_dir: str | Path, slide_ids: list[str]) -> list[Split]:
    """Read CLAM ``splits_<k>.csv`` files (columns train, val, test; blank padding).

    Slides not in the cohort are dropped with a warning; a fold without validation slides is refused.
    Warns when test sets overlap across folds (CLAM's Monte-Carlo splits do not form a partition).
    """
    d = Path(splits_dir)
    files = sorted(d.glob("splits_*.csv"), key=lambda p: int("".join(ch for ch in p.stem if ch.isdigit()) or 0))
    if not files:
        raise UsageError("no splits_<k>.csv in the splits directory", path=d,
                         fix="point --splits to CLAM's splits/<task>_<pct>/ folder")
    pos = {s: i for i, s in enumerate(slide_ids)}
    out, seen_test, missing = [], {}, set()
    for f, path in enumerate(files):
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        parts = {}
        for col in ("train", "val", "test"):
            ids = [normalise_slide_id(r[col]) for r in rows if r.get(col) and r[col].strip()]
            missing.update(i for i in ids if i not in pos)
            parts[col] = np.array(sorted(pos[i] for i in ids if i in pos), dtype=np.int64)
        if not len(parts["val"]):
            raise UsageError("split has no validation slides", path=path,
                             fix="the protocol selects models on validation; regenerate splits with a val part")
        for col in ("train", "test"):
            if not len(parts[col]):
                raise UsageError(f"split has no {col} slides in this store", path=path,
                                 fix=f"every split needs {col} slides that exist in the store")
        for i in parts["test"]:
            seen_test.setdefault(int(i), []).append(f)
        out.append(Split(0, f, parts["train"], parts["val"], parts["test"]))
    if missing:
        warnings.warn(f"{len(missing)} slide(s) named in {d} are not in the cohort and were skipped "
                      f"(e.g. {sorted(missing)[:3]})", stacklevel=2)
    overlap = {slide_ids[i]: fs for i, fs in seen_test.items() if len(fs) > 1}
    if overlap:
        warnings.warn(f"test sets overlap across folds for {len(overlap)} slide(s) (e.g. "
                      f"{list(overlap)[:3]}): mean +/- std over folds is not a cross-validation estimate",
                      stacklevel=2)
    return out

"""Bags from the store: one slide per item, read lazily (per DataLoader worker), optional RAM cache.

A :class:`Bag` holds what every model and the SAM-MIL losses need, as torch tensors::

    features        (N, D) float32   patch features, store order (aligned with the store's coords)
    group_features  (S, D) float32   one mean feature per segment
    segment_ids     (N,)   int64     0..S-1, -1 = in no segment
    segment_sizes   (S,)   int64
    segment_sam_area(S,)   float64   SAM-image pixels (the reference code's area unit)
    patch_sam_area  (N,)   float64   the reference's per-patch ``relative_area``
    label           ()     int64

Labels come from the store's slide attr ``label`` or a ``--labels`` CSV (``slide_id,label[,case_id]``);
ids stay strings. Class order: ``--classes`` or the sorted label strings (numeric sort when all labels
are integers), so that for binary tasks "1"/"tumor" is the positive class.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from clam2sam.errors import StoreError, TrainError, UsageError
from clam2sam.ids import normalise_slide_id
from clam2sam.store import open_store

BAG_ARRAYS = ("features", "group_features", "segment_ids", "segment_sizes", "segment_sam_area",
              "patch_sam_area")


@dataclass
class Bag:
    """One slide as tensors (see module doc for shapes)."""

    slide_id: str
    features: torch.Tensor
    group_features: torch.Tensor
    segment_ids: torch.Tensor
    segment_sizes: torch.Tensor
    segment_sam_area: torch.Tensor
    patch_sam_area: torch.Tensor
    label: torch.Tensor

    @property
    def n_patches(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_segments(self) -> int:
        return int(self.group_features.shape[0])

    def to(self, device) -> "Bag":
        kw = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
              for k, v in self.__dict__.items()}
        return Bag(**kw)


def collate_one(items: list[Bag]) -> Bag:
    """Batch size 1: the loader yields the Bag itself (bags differ in length)."""
    return items[0]


# ----------------------------------------------------------------------------------------- labels

@dataclass
class Cohort:
    """Slides with their label strings, class indices and case ids (all lists aligned)."""

    slide_ids: list[str]
    labels: list[str]
    case_ids: list[str]
    classes: list[str]

    @property
    def y(self) -> np.ndarray:
        idx = {c: i for i, c in enumerate(self.classes)}
        return np.array([idx[lab] for lab in self.labels], dtype=np.int64)


def _class_order(labels: list[str], classes: list[str] | None) -> list[str]:
    uniq = sorted(set(labels))
    if classes:
        missing = [u for u in uniq if u not in classes]
        if missing:
            raise UsageError(f"labels {missing} are not in --classes {classes}",
                             fix="list every label value in --classes")
        return list(classes)
    try:
        return sorted(uniq, key=lambda s: float(s))
    except ValueError:
        return uniq


def read_labels_csv(path: str | Path) -> dict[str, tuple[str, str | None]]:
    """``slide_id -> (label, case_id or None)`` from a CSV with a header (slide_id,label[,case_id]).

    A CSV without header (CLAM/SAM-MIL style ``name,label`` rows) is accepted too.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError("labels CSV not found", path=path, fix="pass an existing --labels file")
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise UsageError("labels CSV is empty", path=path)
    head = [c.strip().lower() for c in rows[0]]
    if "label" in head:
        sid_col = next((head.index(c) for c in ("slide_id", "slide", "name", "id") if c in head), 0)
        lab_col = head.index("label")
        case_col = next((head.index(c) for c in ("case_id", "case", "patient", "patient_id") if c in head), None)
        rows = rows[1:]
    else:
        sid_col, lab_col, case_col = 0, 1, (2 if len(rows[0]) > 2 else None)
    out = {}
    for i, r in enumerate(rows, start=2):
        if len(r) <= max(sid_col, lab_col):
            raise UsageError(f"line {i}: expected slide_id,label", path=path)
        sid = normalise_slide_id(r[sid_col])
        case = r[case_col].strip() if case_col is not None and case_col < len(r) and r[case_col].strip() else None
        out[sid] = (r[lab_col].strip(), case)
    return out


def load_cohort(store_path: str, labels_csv: str | None = None, classes: list[str] | None = None) -> Cohort:
    """Slides of the store that have a label, with case ids (fallback: the slide id).

    Raises:
        UsageError: labels CSV names slides absent from the store, or fewer than 2 classes.
        StoreError: the store is missing or of another schema.
    """
    reader = open_store(store_path)
    in_store = reader.slide_ids()
    if not in_store:
        raise StoreError("store holds no complete slide", path=store_path,
                         fix="run `clam2sam convert` first (or let it finish)")
    sids, labs, cases = [], [], []
    if labels_csv:
        table = read_labels_csv(labels_csv)
        unknown = sorted(set(table) - set(in_store))
        if unknown:
            raise UsageError(f"{len(unknown)} slide(s) of the labels CSV are not in the store: "
                             f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}", path=labels_csv,
                             fix="fix the ids or convert those slides; ids are compared as strings")
        for sid in in_store:
            if sid in table:
                lab, case = table[sid]
                if case is None:
                    case = reader.slide_attrs(sid).get("case_id")
                sids.append(sid), labs.append(lab), cases.append(str(case) if case else sid)
    else:
        for sid in in_store:
            a = reader.slide_attrs(sid)
            if a.get("label") is None or str(a.get("label")) == "":
                continue
            sids.append(sid), labs.append(str(a["label"]))
            cases.append(str(a["case_id"]) if a.get("case_id") else sid)
        if not sids:
            raise UsageError("no slide in the store has a label", path=store_path,
                             fix="pass --labels CSV with columns slide_id,label[,case_id]")
    order = _class_order(labs, classes)
    if len(set(labs)) < 2:
        raise UsageError(f"need at least 2 classes, found {sorted(set(labs))}", path=labels_csv or store_path)
    return Cohort(sids, labs, cases, order)


# ---------------------------------------------------------------------------------------- dataset

def read_bag(reader, slide_id: str, label: int) -> Bag:
    """Read one slide: one file per array, read straight into the arrays the tensors wrap (no feature copy)."""
    arr = {}
    for name in BAG_ARRAYS:  # StoreReader.read_array: one shard per array, StoreError naming slide+array
        arr[name] = reader.read_array(slide_id, name)
    feats = _tensor(arr["features"], np.float32)     # float32 store: wraps the array read, no copy
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise TrainError(f"slide has no patches (features shape {tuple(feats.shape)})", slide=slide_id,
                         path=reader.path, fix="remove it from the labels CSV or re-convert it")
    gf = _tensor(arr["group_features"], np.float32).reshape(-1, feats.shape[1])
    return Bag(
        slide_id=slide_id, features=feats, group_features=gf,
        segment_ids=_tensor(arr["segment_ids"], np.int64),
        segment_sizes=_tensor(arr["segment_sizes"], np.int64),
        segment_sam_area=_tensor(arr["segment_sam_area"], np.float64),
        patch_sam_area=_tensor(arr["patch_sam_area"], np.float64),
        label=torch.tensor(int(label), dtype=torch.int64))


def _tensor(a: np.ndarray, dtype) -> torch.Tensor:
    """``a`` as a tensor of ``dtype``; copies only when the dtype differs or ``a`` is not a writable C array."""
    a = np.asarray(a)
    if not (a.flags.c_contiguous and a.flags.writeable and a.dtype.isnative):
        a = np.array(a, order="C")
    return torch.from_numpy(a.astype(dtype, copy=False))


class BagDataset(Dataset):
    """Slides of a store as :class:`Bag` items.

    The store is opened lazily in each process (so forked DataLoader workers each hold their own reader).
    With ``cache=True`` bags are kept in RAM after their first read (per worker; use
    ``persistent_workers`` or ``num_workers=0`` so the cache survives epochs).
    """

    def __init__(self, store_path: str, slide_ids: list[str], labels: list[int] | np.ndarray,
                 cache: bool = False):
        self.store_path = str(store_path)
        self.slide_ids = list(slide_ids)
        self.labels = [int(v) for v in labels]
        self.cache = cache
        self._reader = None
        self._pid = None
        self._mem: dict[int, Bag] = {}

    def __len__(self) -> int:
        return len(self.slide_ids)

    def _store(self):
        import os

        if self._reader is None or self._pid != os.getpid():
            info = torch.utils.data.get_worker_info()
            if info is not None and info.num_workers > 1:   # W workers share the CPUs: C // W read threads each
                from clam2sam.fast_read import set_read_threads
                from clam2sam.threads import usable_cpus

                set_read_threads(max(1, usable_cpus() // info.num_workers))
            self._reader, self._pid = open_store(self.store_path), os.getpid()
        return self._reader

    def __getitem__(self, i: int) -> Bag:
        if i in self._mem:
            return self._mem[i]
        bag = read_bag(self._store(), self.slide_ids[i], self.labels[i])
        if self.cache:
            self._mem[i] = bag
        return bag

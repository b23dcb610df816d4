"""Bags from the store: one slide per item, read lazily (per DataLoader worker), optional RAM cache.

A :class:`Bag` holds what every model and the SAM-MIL losses need, as torch tensors::

    features        (N, D) float32   patch features, store order (aligned with the store's coords)
    group_features  (S, D) float32   one mean feature per segment
    segment_ids     (N,)   int64     0..S-1, -1 = in no segment
    segment_sizes   (S,)   int64
    segment_sam_area(S,)   float64   SAM-image pixels (the reference code's area unit)
    patch_sam_area  (N,)   float64   the reference's per-patch ``relative_area``
    label           ()     int64

The cohort (labels, classes, case ids, damaged slides) is trainer/cohort.py; its public names are
re-exported here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from clam2sam.errors import TrainError
from clam2sam.store.writer import open_store
from trainer.cohort import (BAG_ARRAYS, Cohort, describe_excluded, load_cohort,  # noqa: F401 (re-exported)
                            read_labels_csv)


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
                from clam2sam.store.fast_read import set_read_threads
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

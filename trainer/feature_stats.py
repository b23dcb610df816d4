"""Per-dimension feature mean and sd of a fold's training slides (for input standardisation).

Each slide's moments (patch count, sum, sum of squares; float64) are read once per process and cached, so
the folds and repeats of a run pay one pass over the store; a fold's statistics combine the moments of
its training slides only (validation and test slides never enter them).
"""
from __future__ import annotations

import numpy as np

_CACHE: dict[tuple[str, str], tuple[int, np.ndarray, np.ndarray]] = {}
_BLOCK = 8192


def slide_moments(reader, store_path: str, slide_id: str) -> tuple[int, np.ndarray, np.ndarray]:
    """``(n, sum (D,), sum of squares (D,))`` of one slide's patch features, float64."""
    key = (str(store_path), slide_id)
    if key not in _CACHE:
        x = reader.read_array(slide_id, "features")            # (N, D)
        s1 = np.zeros(x.shape[1], np.float64)
        s2 = np.zeros(x.shape[1], np.float64)
        for i in range(0, x.shape[0], _BLOCK):
            b = np.asarray(x[i:i + _BLOCK], dtype=np.float64)
            s1 += b.sum(0)
            s2 += np.einsum("nd,nd->d", b, b)
        _CACHE[key] = (int(x.shape[0]), s1, s2)
    return _CACHE[key]


def combine(moments: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Pooled per-dimension mean and sd ``(D,), (D,)`` (float32) over all patches of the given slides."""
    n = sum(m[0] for m in moments)
    if n == 0:
        raise ValueError("no patches to fit the feature statistics on")
    s1 = sum(m[1] for m in moments)
    s2 = sum(m[2] for m in moments)
    mean = s1 / n
    var = np.maximum(s2 / n - mean * mean, 0.0)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def training_feature_stats(store_path: str, slide_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd over the patches of the training slides ``slide_ids``."""
    from clam2sam.store.writer import open_store

    reader = open_store(store_path)
    return combine([slide_moments(reader, store_path, sid) for sid in slide_ids])

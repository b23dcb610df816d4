"""Pure numpy helpers for segment membership bookkeeping (no I/O).

Membership is held as CSR: the members of segment ``k`` are
``indices[indptr[k]:indptr[k+1]]`` (patch row numbers, ascending).
"""
from __future__ import annotations

import numpy as np

from clam2sam.store.schema import NO_SEGMENT


def csr_from_segment_ids(segment_ids: np.ndarray, n_segments: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR membership of a partition.

    Args:
        segment_ids: ``(N,)`` ints in ``0..n_segments-1`` or ``NO_SEGMENT``.
        n_segments: S.

    Returns:
        ``indptr (S+1,) int64``, ``indices (M,) int32`` with rows ascending inside each segment.
    """
    segment_ids = np.asarray(segment_ids)
    assigned = np.flatnonzero(segment_ids != NO_SEGMENT)
    order = np.argsort(segment_ids[assigned], kind="stable")
    indices = assigned[order].astype(np.int32)
    counts = np.bincount(segment_ids[assigned], minlength=n_segments) if n_segments else np.zeros(0, np.int64)
    indptr = np.zeros(n_segments + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, indices


def group_features_csr(features: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
                       out_dtype=None) -> np.ndarray:
    """Mean of member feature rows per segment, accumulated in float64.

    Args:
        features: ``(N, D)``.
        indptr, indices: CSR membership (see module doc).
        out_dtype: result dtype; default float32 (float64 when features are float64).

    Returns:
        ``(S, D)`` group features. A segment without members would be NaN; callers drop empty segments.
    """
    if out_dtype is None:
        out_dtype = np.float64 if features.dtype == np.float64 else np.float32
    n_seg = len(indptr) - 1
    D = features.shape[1]
    out = np.empty((n_seg, D), dtype=out_dtype)
    for k in range(n_seg):
        rows = indices[indptr[k]:indptr[k + 1]]
        if len(rows) == 0:
            out[k] = np.nan
            continue
        # float64 accumulation, then cast
        out[k] = features[np.sort(rows)].astype(np.float64).mean(axis=0)
    return out


def group_features_partition(features: np.ndarray, segment_ids: np.ndarray, n_segments: int,
                             out_dtype=None) -> np.ndarray:
    """Fast path for a partition: one ``np.add.at``-free pass using sorting (``(S, D)``)."""
    if out_dtype is None:
        out_dtype = np.float64 if features.dtype == np.float64 else np.float32
    D = features.shape[1]
    if n_segments == 0:
        return np.zeros((0, D), dtype=out_dtype)
    indptr, indices = csr_from_segment_ids(segment_ids, n_segments)
    sums = np.add.reduceat(features[indices].astype(np.float64), indptr[:-1].clip(max=max(len(indices) - 1, 0)),
                           axis=0) if len(indices) else np.zeros((n_segments, D))
    counts = np.diff(indptr)
    sums[counts == 0] = np.nan
    return (sums / np.maximum(counts, 1)[:, None]).astype(out_dtype)

"""Patch -> SAM-segment membership, segment areas and group features (pure numpy, no I/O).

Two rules (names in :mod:`clam2sam.store.schema`):

* ``MEMBERSHIP_PARTITION`` ("smallest-centre", default): a patch belongs to the smallest-area mask that
  covers its centre (centre mapped to SAM pixels with ``floor``); -1 when none. A partition.
* ``MEMBERSHIP_REFERENCE`` ("reference"): SAM-MIL's scripts' rule, reproduced exactly. With
  ``a = round((top_left - start) / D)`` (numpy round-half-even) and ``aps = int(patch_size) // D``, a patch
  is a member of mask m iff ``a`` lies in m's XYWH bbox (half-open, ``w = x_max - x_min``) and any pixel of
  ``segmentation[a_y:a_y+aps, a_x:a_x+aps]`` is set. A patch may be in several masks; its
  ``segment_ids`` entry (and ``patch_sam_area``) is the smallest-area one, while group features use all
  members of each mask (the CSR).

Segments are the masks with at least one member, numbered 0..S-1 in ascending source mask index.
Everything is vectorised over patches; the only Python loops run over masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clam2sam.store import schema
from clam2sam.errors import UsageError
from clam2sam.store.groups import csr_from_segment_ids
from clam2sam.masks import MaskSet
from clam2sam.store.writer import SlideArrays


@dataclass
class Membership:
    """Result of :func:`assign_membership`. N patches, S non-empty segments, M memberships."""

    rule: str
    segment_ids: np.ndarray           # (N,) int32, 0..S-1 or -1
    patch_sam_area: np.ndarray        # (N,) int64, SAM-px area of the smallest containing mask, 1 for none
    member_indptr: np.ndarray         # (S+1,) int64
    member_indices: np.ndarray        # (M,) int32, ascending rows inside each segment
    segment_source_index: np.ndarray  # (S,) int32, mask index in the source
    segment_sam_area: np.ndarray      # (S,) int64

    @property
    def n_segments(self) -> int:
        return int(self.segment_source_index.shape[0])


def empty_membership(n_patches: int, rule: str = schema.MEMBERSHIP_PARTITION) -> Membership:
    """Membership of a slide without segments (S = 0, every patch -1, area 1)."""
    return Membership(rule=rule, segment_ids=np.full(n_patches, schema.NO_SEGMENT, np.int32),
                      patch_sam_area=np.ones(n_patches, np.int64), member_indptr=np.zeros(1, np.int64),
                      member_indices=np.zeros(0, np.int32), segment_source_index=np.zeros(0, np.int32),
                      segment_sam_area=np.zeros(0, np.int64))


def _smallest(member_lists: list[tuple[int, np.ndarray]], areas: np.ndarray, n: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Per patch: source index and area of the smallest-area mask among its memberships (ties: lowest index)."""
    best_idx = np.full(n, -1, np.int64)
    best_area = np.full(n, np.iinfo(np.int64).max, np.int64)
    for m, rows in member_lists:  # ascending m, strict '<' keeps the lowest index on ties
        better = rows[areas[m] < best_area[rows]]
        best_idx[better] = m
        best_area[better] = areas[m]
    return best_idx, best_area


def _members_centre(coords: np.ndarray, ps: float, ms: MaskSet) -> list[tuple[int, np.ndarray]]:
    g = ms.geometry
    D = g.total_downsample
    u = np.floor((coords[:, 0] + ps / 2.0 - g.start_x) / D).astype(np.int64)  # (N,)
    v = np.floor((coords[:, 1] + ps / 2.0 - g.start_y) / D).astype(np.int64)
    inside = np.flatnonzero((u >= 0) & (v >= 0) & (u < g.width) & (v < g.height))
    ui, vi = u[inside], v[inside]
    out = []
    for m in range(ms.n_masks):
        hit = ms.masks[m, vi, ui]  # (n_inside,) bool
        if hit.any():
            out.append((m, inside[hit]))
    return out


def _members_reference(coords: np.ndarray, ps: float, ms: MaskSet) -> list[tuple[int, np.ndarray]]:
    g = ms.geometry
    D = g.total_downsample
    aps = int(ps) // D
    if aps <= 0:
        return []
    # SAM-MIL: ((coord - start) / D).round().astype(int): numpy rounds half to even.
    ax = np.round((coords[:, 0] - g.start_x) / D).astype(np.int64)  # (N,)
    ay = np.round((coords[:, 1] - g.start_y) / D).astype(np.int64)
    out = []
    for m in range(ms.n_masks):
        bx, by, bw, bh = (int(t) for t in ms.bboxes[m])
        cand = np.flatnonzero((ax >= bx) & (ax < bx + bw) & (ay >= by) & (ay < by + bh))
        if cand.size == 0:
            continue
        seg = ms.masks[m]  # (H, W) bool
        rows_any = np.flatnonzero(seg.any(axis=1))
        if rows_any.size == 0:
            continue
        cols_any = np.flatnonzero(seg.any(axis=0))
        y0, y1 = int(rows_any[0]), int(rows_any[-1]) + 1
        x0, x1 = int(cols_any[0]), int(cols_any[-1]) + 1
        crop = seg[y0:y1, x0:x1]
        integ = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.int32)  # summed-area table of the crop
        np.cumsum(np.cumsum(crop, axis=0, dtype=np.int32), axis=1, out=integ[1:, 1:])
        cy, cx = ay[cand], ax[cand]
        ry0 = np.clip(cy - y0, 0, y1 - y0)
        ry1 = np.clip(cy + aps - y0, 0, y1 - y0)
        rx0 = np.clip(cx - x0, 0, x1 - x0)
        rx1 = np.clip(cx + aps - x0, 0, x1 - x0)
        count = integ[ry1, rx1] - integ[ry0, rx1] - integ[ry1, rx0] + integ[ry0, rx0]
        rows = cand[count > 0]
        if rows.size:
            out.append((m, rows))
    return out


def assign_membership(coords: np.ndarray, patch_size_level0: float, maskset: MaskSet | None,
                      rule: str = schema.MEMBERSHIP_PARTITION) -> Membership:
    """Assign patches to SAM segments.

    Args:
        coords: ``(N, 2)`` int64 level-0 top-left (x, y).
        patch_size_level0: patch side in level-0 pixels.
        maskset: masks at SAM resolution with their geometry; ``None`` gives an empty membership.
        rule: ``schema.MEMBERSHIP_PARTITION`` or ``schema.MEMBERSHIP_REFERENCE``.

    Returns:
        Membership with contiguous segment ids over non-empty masks (ascending source index).
    """
    if rule not in schema.MEMBERSHIP_RULES:
        raise UsageError(f"unknown membership rule {rule!r}", fix=f"use one of {schema.MEMBERSHIP_RULES}")
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    n = coords.shape[0]
    if maskset is None or maskset.n_masks == 0:
        return empty_membership(n, rule)
    areas = np.asarray(maskset.areas, np.int64)
    ps = float(patch_size_level0)
    lists = (_members_reference if rule == schema.MEMBERSHIP_REFERENCE else _members_centre)(coords, ps, maskset)
    best_idx, best_area = _smallest(lists, areas, n)
    if rule == schema.MEMBERSHIP_REFERENCE:  # every mask with >= 1 member (a patch may be in several)
        src = np.array([m for m, _ in lists], dtype=np.int32)  # (S,) ascending
    else:  # partition: only masks that win at least one patch (a fully shadowed mask has no member)
        src = np.unique(best_idx[best_idx >= 0]).astype(np.int32)
    lut = np.full(maskset.n_masks, schema.NO_SEGMENT, np.int32)
    lut[src] = np.arange(len(src), dtype=np.int32)
    assigned = best_idx >= 0
    segment_ids = np.full(n, schema.NO_SEGMENT, np.int32)
    segment_ids[assigned] = lut[best_idx[assigned]]
    patch_sam_area = np.where(assigned, best_area, 1).astype(np.int64)
    if rule == schema.MEMBERSHIP_REFERENCE:
        counts = np.array([len(r) for _, r in lists], dtype=np.int64)
        indptr = np.zeros(len(lists) + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        indices = (np.concatenate([r for _, r in lists]) if lists else np.zeros(0)).astype(np.int32)
    else:
        indptr, indices = csr_from_segment_ids(segment_ids, len(src))
    return Membership(rule=rule, segment_ids=segment_ids, patch_sam_area=patch_sam_area, member_indptr=indptr,
                      member_indices=indices, segment_source_index=src,
                      segment_sam_area=areas[src] if len(src) else np.zeros(0, np.int64))


GROUP_BLOCK = 4096  # member rows gathered at a time (bounds the temporary of scattered members)


def group_means(features: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Mean member feature per segment, accumulated in float64 (no full-slide float64 copy).

    Contiguous members are reduced in place; scattered ones are gathered GROUP_BLOCK rows at a time, so the
    extra memory is bounded by a few MB whatever the segment size.

    Returns:
        ``(S, D)`` float32 (float64 when features are float64); NaN rows for empty segments.
    """
    out_dtype = np.float64 if features.dtype == np.float64 else np.float32
    S = len(indptr) - 1
    out = np.empty((S, features.shape[1]), out_dtype)
    acc = np.empty(features.shape[1], np.float64)                       # (D,)
    for k in range(S):
        rows = indices[indptr[k]:indptr[k + 1]]
        if rows.size == 0:
            out[k] = np.nan
            continue
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if hi - lo == rows.size:                                        # contiguous and sorted: a view
            np.add.reduce(features[lo:hi], axis=0, dtype=np.float64, out=acc)
        else:
            acc[:] = 0.0
            for b in range(0, rows.size, GROUP_BLOCK):
                acc += np.add.reduce(features[rows[b:b + GROUP_BLOCK]], axis=0, dtype=np.float64)
        out[k] = acc / rows.size
    return out


def build_slide_arrays(slide_id: str, features: np.ndarray, coords: np.ndarray, membership: Membership, *,
                       total_downsample: int | None = None, mpp: float | None = None,
                       attrs: dict | None = None) -> SlideArrays:
    """Assemble the store record of one slide.

    Args:
        features: ``(N, D)`` in the source dtype (kept).
        coords: ``(N, 2)`` int64 level-0.
        membership: from :func:`assign_membership`.
        total_downsample: SAM-pixel -> level-0 factor D (segment areas in level-0 px = SAM area * D^2).
        mpp: microns per level-0 pixel (for ``segment_areas_um2``), or None.
        attrs: slide attributes.
    """
    m = membership
    D = float(total_downsample or 1)
    areas0 = m.segment_sam_area.astype(np.float64) * D * D
    um2 = areas0 * float(mpp) ** 2 if mpp else np.full(m.n_segments, np.nan)
    attrs = dict(attrs or {})
    attrs.setdefault("membership", m.rule)
    return SlideArrays(
        slide_id=slide_id, features=features, coords=np.asarray(coords, np.int64), segment_ids=m.segment_ids,
        patch_sam_area=m.patch_sam_area,
        group_features=group_means(features, m.member_indptr, m.member_indices),
        segment_sizes=np.diff(m.member_indptr).astype(np.int64), segment_areas=areas0, segment_areas_um2=um2,
        segment_sam_area=m.segment_sam_area.astype(np.int64),
        segment_source_index=m.segment_source_index.astype(np.int32), member_indptr=m.member_indptr,
        member_indices=m.member_indices, attrs=attrs)

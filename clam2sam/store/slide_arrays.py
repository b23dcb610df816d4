"""``SlideArrays``: everything stored for one slide, as in-memory numpy arrays."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clam2sam.store import schema
from clam2sam.errors import StoreError
from clam2sam.store.groups import csr_from_segment_ids, group_features_partition


@dataclass
class SlideArrays:
    """Everything stored for one slide. Shapes: N patches, D feature dim, S segments, M memberships."""

    slide_id: str
    features: np.ndarray                  # (N, D)
    coords: np.ndarray                    # (N, 2) int64 level-0 (x, y)
    segment_ids: np.ndarray               # (N,) int32, -1 = none
    patch_sam_area: np.ndarray            # (N,) int64
    group_features: np.ndarray            # (S, D)
    segment_sizes: np.ndarray             # (S,) int64
    segment_areas: np.ndarray             # (S,) float64 level-0 px^2
    segment_areas_um2: np.ndarray         # (S,) float64
    segment_sam_area: np.ndarray          # (S,) int64
    segment_source_index: np.ndarray      # (S,) int32
    member_indptr: np.ndarray             # (S+1,) int64
    member_indices: np.ndarray            # (M,) int32
    attrs: dict = field(default_factory=dict)

    @property
    def n_patches(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_segments(self) -> int:
        return int(self.group_features.shape[0])

    @classmethod
    def from_partition(cls, slide_id: str, features: np.ndarray, coords: np.ndarray,
                       segment_ids: np.ndarray | None = None, *, segment_areas=None, segment_sam_area=None,
                       segment_source_index=None, mpp: float | None = None, attrs: dict | None = None
                       ) -> "SlideArrays":
        """Build a slide from in-memory arrays (for cohorts that do not come from CLAM).

        Args:
            features: ``(N, D)`` float16/32/64.
            coords: ``(N, 2)`` level-0 top-left (x, y).
            segment_ids: ``(N,)`` 0..S-1 or -1; ``None`` = no segmentation (S = 0).
            segment_areas: ``(S,)`` level-0 px^2; default: member count x patch area (needs
                ``attrs["patch_size_level0"]``) or member count.
            segment_sam_area: ``(S,)`` SAM-pixel areas; default 0 (unknown).
            segment_source_index: ``(S,)``; default ``arange(S)``.
            mpp: microns per level-0 pixel, for ``segment_areas_um2``.
            attrs: extra slide attrs (label, case_id, patch_size_level0, ...).
        """
        features = np.asarray(features)
        N = features.shape[0]
        coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        if segment_ids is None:
            segment_ids = np.full(N, schema.NO_SEGMENT, np.int32)
        segment_ids = np.asarray(segment_ids, dtype=np.int32)
        S = int(segment_ids.max()) + 1 if N and segment_ids.max() >= 0 else 0
        indptr, indices = csr_from_segment_ids(segment_ids, S)
        sizes = np.diff(indptr).astype(np.int64)
        attrs = dict(attrs or {})
        if segment_areas is None:
            ps = attrs.get("patch_size_level0")
            segment_areas = sizes * (float(ps) ** 2 if ps else 1.0)
        segment_areas = np.asarray(segment_areas, dtype=np.float64)
        sam_area = (np.zeros(S, np.int64) if segment_sam_area is None
                    else np.asarray(segment_sam_area, dtype=np.int64))
        psa = np.ones(N, np.int64)
        assigned = segment_ids >= 0
        psa[assigned] = sam_area[segment_ids[assigned]] if S else 1
        um2 = segment_areas * mpp * mpp if mpp else np.full(S, np.nan)
        if mpp:
            attrs.setdefault("mpp", float(mpp))
        return cls(
            slide_id=slide_id, features=features, coords=coords, segment_ids=segment_ids,
            patch_sam_area=psa, group_features=group_features_partition(features, segment_ids, S),
            segment_sizes=sizes, segment_areas=segment_areas, segment_areas_um2=np.asarray(um2, np.float64),
            segment_sam_area=sam_area,
            segment_source_index=(np.arange(S, dtype=np.int32) if segment_source_index is None
                                  else np.asarray(segment_source_index, np.int32)),
            member_indptr=indptr, member_indices=indices, attrs=attrs)

    def validate(self) -> None:
        """Cheap shape/dtype consistency checks; raises StoreError naming the slide and array."""
        N, S = self.n_patches, self.n_segments
        checks = [
            ("features", self.features.ndim == 2, "must be 2-D (N, D)"),
            ("coords", self.coords.shape == (N, 2), f"shape {self.coords.shape} != ({N}, 2)"),
            ("segment_ids", self.segment_ids.shape == (N,), f"shape {self.segment_ids.shape} != ({N},)"),
            ("patch_sam_area", self.patch_sam_area.shape == (N,), "length != N"),
            ("segment_sizes", self.segment_sizes.shape == (S,), "length != S"),
            ("segment_areas", self.segment_areas.shape == (S,), "length != S"),
            ("segment_areas_um2", self.segment_areas_um2.shape == (S,), "length != S"),
            ("segment_sam_area", self.segment_sam_area.shape == (S,), "length != S"),
            ("segment_source_index", self.segment_source_index.shape == (S,), "length != S"),
            ("member_indptr", self.member_indptr.shape == (S + 1,), "length != S+1"),
            ("group_features", self.group_features.ndim == 2 and
             self.group_features.shape[1:] == self.features.shape[1:], "dim differs from features"),
        ]
        for name, ok, msg in checks:
            if not ok:
                raise StoreError(f"array {name!r}: {msg}", slide=self.slide_id,
                                 fix="this is a bug in the producer of the arrays")
        if S and (self.segment_ids.max() >= S or self.segment_ids.min() < schema.NO_SEGMENT):
            raise StoreError("segment_ids out of range 0..S-1/-1", slide=self.slide_id)

"""In-memory SAM segmentation of one slide, whatever produced it (a SAM-MIL pickle or our SAM pass).

This is the contract between segment *sources* (``segments_pickle.py``, ``sam_pass.py``) and
*membership* (``membership.py``): both sides only see these dataclasses.

Geometry: the SAM image covers the level-0 box starting at ``(start_x, start_y)``; SAM pixel
``(u, v)`` covers level-0 pixels ``[start_x + u*D, start_x + (u+1)*D)`` (same for y), with
``D = total_downsample = int(level_downsample(vis_level)) * downsample_ratio`` as in SAM-MIL.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SamGeometry:
    start_x: int               # level-0 x of SAM pixel (0, 0)
    start_y: int
    total_downsample: int      # D: level-0 pixels per SAM pixel
    width: int                 # SAM image width (pixels)
    height: int                # SAM image height
    vis_level: int = 0         # pyramid level read
    downsample_ratio: int = 1  # extra integer resize after reading vis_level
    level_downsample: float = 1.0  # OpenSlide downsample of vis_level (as used: int() of it in D)
    stop_x: int | None = None  # level-0 bbox end as recorded by SAM-MIL (inclusive max contour point)
    stop_y: int | None = None

    def to_dict(self) -> dict:
        return {k: (None if v is None else (float(v) if isinstance(v, float) else int(v)))
                for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SamGeometry":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class MaskSet:
    """M masks at SAM resolution, in source order (mask index i = pickle element i+1 / SAM output i).

    Attributes:
        masks: ``(M, H, W)`` bool (dense; fine for M up to a few hundred at <=1024 px) -- or use
            ``label_masks`` accessors for compact storage.
        areas: ``(M,)`` int64 SAM-pixel areas (SAM's ``area``).
        bboxes: ``(M, 4)`` int64 XYWH as SAM writes them (w = x_max - x_min, no +1).
        records: per-mask extra fields (``predicted_iou``, ``stability_score``, ``point_coords``, ``crop_box``).
        geometry: the SAM-image <-> level-0 mapping.
        provenance: where the masks came from (pickle path + sha256, or model/checkpoint/params).
    """

    masks: np.ndarray
    areas: np.ndarray
    bboxes: np.ndarray
    geometry: SamGeometry
    records: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    @property
    def n_masks(self) -> int:
        return int(self.masks.shape[0])

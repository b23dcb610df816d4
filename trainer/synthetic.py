"""A small seeded synthetic cohort written straight into a store (tests, bench, demos).

Each slide is a grid of patches cut into Voronoi "segments" (about 10 % of patches in none). Every
segment has one of a few background tissue types (a fixed direction in feature space). In tumour
slides one segment of 4-12 % of the patches is tumour: its patches get a fixed "tumour" direction added.
Slides come in cases (some cases hold two slides of the same label) so grouped splits matter.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from clam2sam.store import SlideArrays, StoreWriter


def _slide(rng: np.random.Generator, sid: str, tumour: bool, n_side: int, dim: int, types: np.ndarray,
           tumour_dir: np.ndarray, signal: float, patch: int = 256) -> SlideArrays:
    gx, gy = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
    xy = np.stack([gx.ravel(), gy.ravel()], 1)
    keep = rng.random(len(xy)) < 0.8                          # tissue: ~80 % of the grid
    xy = xy[keep]
    N = len(xy)
    k = int(rng.integers(6, 14))
    centres = xy[rng.choice(N, k, replace=False)].astype(float)
    seg = np.argmin(((xy[:, None, :] - centres[None]) ** 2).sum(-1), axis=1).astype(np.int32)
    seg[rng.random(N) < 0.1] = -1                             # unassigned patches
    # renumber to 0..S-1 (Voronoi cells can be empty after masking)
    used = np.unique(seg[seg >= 0])
    remap = -np.ones(k, np.int32)
    remap[used] = np.arange(len(used), dtype=np.int32)
    seg = np.where(seg >= 0, remap[np.maximum(seg, 0)], -1).astype(np.int32)
    S = len(used)
    seg_type = rng.integers(0, len(types), S)
    feats = rng.normal(0.0, 1.0, (N, dim)).astype(np.float32)
    has = seg >= 0
    feats[has] += 0.8 * types[seg_type[seg[has]]]
    if tumour:
        sizes = np.bincount(seg[has], minlength=S)
        frac = sizes / N
        cand = np.flatnonzero((frac >= 0.04) & (frac <= 0.12))
        t = int(rng.choice(cand)) if len(cand) else int(np.argmin(np.abs(frac - 0.08)))
        members = np.flatnonzero(seg == t)
        hit = members[rng.random(len(members)) < 0.85]
        feats[hit] += signal * tumour_dir
    coords = (xy * patch).astype(np.int64)
    sam_area = np.bincount(seg[has], minlength=S).astype(np.int64) * 40 + rng.integers(0, 30, S)
    return SlideArrays.from_partition(sid, feats, coords, seg, segment_sam_area=sam_area,
                                      attrs={"label": "tumor" if tumour else "normal", "patch_size_level0": patch})


def make_synthetic_store(path: str | Path, *, n_slides: int = 40, n_side: int = 14, dim: int = 32,
                         signal: float = 1.5, seed: int = 0) -> Path:
    """Write a balanced cohort of ``n_slides`` slides (~0.8 * n_side^2 patches each) to ``path``.

    Labels are "normal" / "tumor" (tumor = positive); case ids ``case_<j>``, some with two slides.
    """
    rng = np.random.default_rng(seed)
    types = rng.normal(0.0, 1.0, (4, dim)).astype(np.float32)
    tumour_dir = rng.normal(0.0, 1.0, dim).astype(np.float32)
    tumour_dir /= np.linalg.norm(tumour_dir) / np.sqrt(2.0)
    labels = np.array([i % 2 == 1 for i in range(n_slides)])
    # some cases hold two slides (j and j+2: same label)
    case_of, paired, n_case = [], set(), 0
    for j in range(n_slides):
        if j >= 2 and (j - 2) not in paired and case_of[j - 2] not in case_of[:j - 2] and rng.random() < 0.3:
            case_of.append(case_of[j - 2])
            paired.add(j)
        else:
            case_of.append(f"case_{n_case:03d}")
            n_case += 1
    w = StoreWriter(path, feature_dim=dim, feature_dtype="float32", overwrite=True)
    try:
        for j in range(n_slides):
            s = _slide(rng, f"slide_{j:03d}", bool(labels[j]), n_side, dim, types, tumour_dir, signal)
            s.attrs["case_id"] = case_of[j]
            w.write_slide(s)
        w.finalize()
    finally:
        w.close()
    return Path(path)

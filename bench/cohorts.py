"""Seeded accuracy cohorts with real-size bags, written straight into a clam2sam store.

Presets (``python bench/cohorts.py PRESET OUT.zarr``):

* ``rare``: 72 slides of 5k-15k patches, lesions of 0.3-1 % of a positive slide's patches, each lesion
  patch clearly separable (a logistic regression on max-pooled features is near AUC 1.0, on mean-pooled
  features near 0.5). Tests that attention MIL finds a rare witness in a big bag.
* ``realsize``: 60 slides of 5k-50k patches, lesions of 0.1-2 %, about a third of them inside a
  segment that covers >= 20 % of the slide.

Slide model: patches on a grid, cut into Voronoi segments of very different sizes (a few large ones);
each segment has a tissue type (a prototype direction, shared by the cohort); every patch gets unit
Gaussian noise and a per-slide batch offset. A positive slide gets one or two compact lesion blobs whose
patches are shifted by ``snr`` noise sd on a few cohort-wide lesion dimensions (sparse, as in ReLU
features, so that a max over patches sees them). D defaults to 256 (1024 quadruples
time and memory on a 2-core machine; pass ``--dim 1024`` where memory and time allow).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from clam2sam.store import SlideArrays, StoreWriter  # noqa: E402


@dataclass(frozen=True)
class CohortParams:
    slides: int = 72
    min_patches: int = 5000
    max_patches: int = 15000
    dim: int = 256
    lesion_frac: tuple[float, float] = (0.003, 0.01)
    snr: float = 5.0                 # lesion shift per lesion dimension, in noise sd
    lesion_dims: int = 8             # the lesion shifts this many feature dimensions (sparse, as ReLU features)
    n_types: int = 6
    type_scale: float = 0.6          # sd per dim of the tissue prototypes
    batch_sd: float = 0.3            # per-slide offset sd per dim
    segments: tuple[int, int] = (8, 20)
    unassigned: float = 0.08         # share of patches in no segment
    seed: int = 0


PRESETS = {
    "rare": CohortParams(),
    "realsize": CohortParams(slides=60, min_patches=5000, max_patches=50000, lesion_frac=(0.001, 0.02),
                             snr=4.0, segments=(10, 30)),
    "small-rare": CohortParams(slides=36, min_patches=3000, max_patches=6000, dim=128),
}


def _segments(rng, xy: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Voronoi cells with weighted (power) distances so that sizes vary widely: ``(N,)`` int32 0..S-1."""
    k = int(rng.integers(lo, hi + 1))
    N = len(xy)
    centres = xy[rng.choice(N, k, replace=False)].astype(np.float64)
    weight = rng.lognormal(0.0, 0.8, k)          # large weight = large cell
    d = ((xy[:, None, :].astype(np.float64) - centres[None]) ** 2).sum(-1) / weight[None] ** 2
    seg = np.argmin(d, axis=1)
    used, seg = np.unique(seg, return_inverse=True)
    return seg.astype(np.int32)


def make_slide(rng, sid: str, positive: bool, p: CohortParams, types: np.ndarray, lesion_dir: np.ndarray,
               patch: int = 256) -> tuple[SlideArrays, dict]:
    n = int(rng.integers(p.min_patches, p.max_patches + 1))
    side = int(np.ceil(np.sqrt(n / 0.8)))
    gx, gy = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    xy = np.stack([gx.ravel(), gy.ravel()], 1)
    xy = xy[rng.choice(len(xy), n, replace=False)]
    xy = xy[np.lexsort((xy[:, 1], xy[:, 0]))]
    seg = _segments(rng, xy, *p.segments)
    S = int(seg.max()) + 1
    seg_type = rng.integers(0, p.n_types, S)
    feats = rng.normal(0.0, 1.0, (n, p.dim)).astype(np.float32)
    feats += (p.batch_sd * rng.normal(0.0, 1.0, p.dim)).astype(np.float32)
    feats += types[seg_type[seg]]
    info = {"n": n, "lesion_patches": 0, "lesion_in_large_segment": False}
    if positive:
        frac = rng.uniform(*p.lesion_frac)
        k_total = max(3, int(round(frac * n)))
        blobs = 1 if rng.random() < 0.6 else 2
        hit = np.zeros(n, bool)
        for b in range(blobs):
            c = xy[rng.integers(n)]
            d = ((xy - c) ** 2).sum(1)
            hit[np.argsort(d, kind="stable")[:max(2, k_total // blobs)]] = True
        feats[hit] += p.snr * lesion_dir
        sizes = np.bincount(seg, minlength=S) / n
        info.update(lesion_patches=int(hit.sum()), lesion_in_large_segment=bool((sizes[seg[hit]] >= 0.2).any()))
    seg = seg.copy()
    seg[rng.random(n) < p.unassigned] = -1
    used = np.unique(seg[seg >= 0])
    remap = -np.ones(S, np.int32)
    remap[used] = np.arange(len(used), dtype=np.int32)
    seg = np.where(seg >= 0, remap[np.maximum(seg, 0)], -1).astype(np.int32)
    S = len(used)
    sam_area = np.bincount(seg[seg >= 0], minlength=S).astype(np.int64) * 16
    s = SlideArrays.from_partition(sid, feats, (xy * patch).astype(np.int64), seg, segment_sam_area=sam_area,
                                   attrs={"label": "tumor" if positive else "normal", "case_id": f"case_{sid}",
                                          "patch_size_level0": patch})
    return s, info


def generate(out: str | Path, p: CohortParams, progress: bool = True) -> dict:
    """Write the cohort to ``out`` (overwrites). Returns a manifest (per-slide sizes and lesion counts)."""
    rng = np.random.default_rng(p.seed)
    types = (p.type_scale * rng.normal(0.0, 1.0, (p.n_types, p.dim))).astype(np.float32)
    lesion_dir = np.zeros(p.dim, np.float32)
    lesion_dir[rng.choice(p.dim, p.lesion_dims, replace=False)] = 1.0
    labels = rng.permutation(np.arange(p.slides) % 2 == 1)
    w = StoreWriter(out, feature_dim=p.dim, feature_dtype="float32", overwrite=True)
    slides = []
    try:
        for j in range(p.slides):
            s, info = make_slide(rng, f"slide_{j:03d}", bool(labels[j]), p, types, lesion_dir)
            w.write_slide(s)
            slides.append({"slide_id": s.slide_id, "positive": bool(labels[j]), **info})
            if progress:
                print(f"\r{j + 1}/{p.slides} slides", end="", file=sys.stderr, flush=True)
        w.finalize()
    finally:
        w.close()
    if progress:
        print(file=sys.stderr)
    return {"params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.__dict__.items()},
            "slides": slides}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("preset", choices=list(PRESETS))
    ap.add_argument("out")
    ap.add_argument("--slides", type=int)
    ap.add_argument("--dim", type=int)
    ap.add_argument("--max-patches", type=int)
    ap.add_argument("--seed", type=int)
    a = ap.parse_args(argv)
    p = PRESETS[a.preset]
    p = replace(p, **{k: v for k, v in (("slides", a.slides), ("dim", a.dim), ("max_patches", a.max_patches),
                                         ("seed", a.seed)) if v is not None})
    import json

    man = generate(a.out, p)
    Path(str(a.out).rstrip("/") + ".manifest.json").write_text(json.dumps(man, indent=1) + "\n")
    n = [s["n"] for s in man["slides"]]
    les = [s["lesion_patches"] / s["n"] for s in man["slides"] if s["positive"]]
    print(f"{len(n)} slides, {min(n)}-{max(n)} patches, lesion share {min(les):.4f}-{max(les):.4f}, "
          f"{sum(s['lesion_in_large_segment'] for s in man['slides'])} lesions touch a segment >= 20 %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

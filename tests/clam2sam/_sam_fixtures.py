"""Shared helpers for the SAM pass tests: a tiny random SAM checkpoint, a pyramidal TIFF, a CLAM archive.

Nothing here downloads anything; everything is written under pytest's tmp folders.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from clam2sam.sam.segment_pass import SamParams

CMU_SLIDE = Path("/work/shared/data/cmu_small_region.svs")
REF = Path("/work/shared/fixtures/reference")
CMU_PATCHES = REF / "clam" / "patches" / "cmu_small_region.h5"
CMU_FEATURES = REF / "clam" / "h5_files" / "cmu_small_region.h5"
REF_PICKLE = REF / "sammil" / "segments" / "cmu_small_region.pkl"

# Fast settings for a random-weight model: 4 prompt points, every mask kept (random scores are low).
FAST = SamParams(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, crop_n_layers=0,
                 box_nms_thresh=1.0)
FAST_FLAGS = ["--sam-model", "tiny", "--points-per-side", "2", "--pred-iou-thresh", "0",
              "--stability-score-thresh", "0", "--crop-n-layers", "0", "--box-nms-thresh", "1", "--device", "cpu"]


def cmu_coords() -> np.ndarray:
    with h5py.File(CMU_PATCHES, "r") as f:
        return f["coords"][:].astype(np.int64)  # (182, 2)


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    from clam2sam.sam.model import save_random_checkpoint

    return save_random_checkpoint("tiny", path, seed=seed)


def synthetic_rgb(size: int, seed: int = 0) -> np.ndarray:
    """``(size, size, 3)`` uint8 'tissue': pink background with darker smooth blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.empty((size, size, 3), np.float32)
    img[...] = (235, 210, 225)
    for _ in range(12):
        cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.04, 0.15)
        w = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))[..., None]
        img = img * (1 - w) + w * rng.uniform(60, 160, size=3)
    return img.clip(0, 255).astype(np.uint8)


def write_pyramid_tiff(path: Path, level0: np.ndarray, n_levels: int = 3, mpp: float = 0.5) -> Path:
    """Tiled pyramidal TIFF that OpenSlide opens as generic-tiff (one top-level IFD per level)."""
    import tifffile
    from PIL import Image

    H, W = level0.shape[:2]
    res = 1e4 / mpp  # pixels per centimetre
    with tifffile.TiffWriter(path, bigtiff=False) as tw:
        for k in range(n_levels):
            lvl = level0 if k == 0 else np.asarray(
                Image.fromarray(level0).resize((W // 2 ** k, H // 2 ** k), Image.BILINEAR))
            tw.write(lvl, tile=(256, 256), photometric="rgb", compression="zlib", subfiletype=0 if k == 0 else 1,
                     resolution=(res / 2 ** k, res / 2 ** k), resolutionunit="CENTIMETER", metadata=None)
    return path


def grid_coords(x0: int, y0: int, x1: int, y1: int, step: int = 128) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(x0, x1, step), np.arange(y0, y1, step), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)  # (N, 2), x-major like CLAM


def write_clam_slide(archive: Path, slide_id: str, coords: np.ndarray, dim: int = 8, patch_size: int = 128,
                     level_dim=(2048, 2048), seed: int = 0) -> np.ndarray:
    """A CLAM feat_dir entry (h5_files + pt_files + patches) for ``slide_id``; returns the features."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(len(coords), dim)).astype(np.float32)
    for sub in ("h5_files", "pt_files", "patches"):
        (archive / sub).mkdir(parents=True, exist_ok=True)
    with h5py.File(archive / "h5_files" / f"{slide_id}.h5", "w") as f:
        f["features"] = feats
        f["coords"] = coords.astype(np.int32)
    torch.save(torch.from_numpy(feats), archive / "pt_files" / f"{slide_id}.pt")
    with h5py.File(archive / "patches" / f"{slide_id}.h5", "w") as f:
        d = f.create_dataset("coords", data=coords.astype(np.int64))
        d.attrs.update({"patch_size": patch_size, "patch_level": 0, "downsample": np.array([1.0, 1.0]),
                        "downsampled_level_dim": np.array(level_dim), "level_dim": np.array(level_dim),
                        "name": slide_id, "save_path": str(archive / "patches")})
    return feats

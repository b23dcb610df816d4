"""Small synthetic CLAM / TRIDENT / SAM-MIL archives for the converter's tests (written with h5py/torch)."""
from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import torch

REFERENCE = Path("/work/shared/fixtures/reference")
PL_HEADER = ("slide_id,process,status,seg_level,sthresh,mthresh,close,use_otsu,keep_ids,exclude_ids,a_t,a_h,"
             "max_n_holes,vis_level,line_thickness,use_padding,contour_fn")


def grid_coords(n: int, patch: int = 64, cols: int = 8, origin=(0, 0)) -> np.ndarray:
    """(n, 2) int64 level-0 top-lefts on a grid, x-major like CLAM."""
    i = np.arange(n)
    return np.stack([origin[0] + (i // cols) * patch, origin[1] + (i % cols) * patch], 1).astype(np.int64)


def features(n: int, d: int = 8, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(dtype)


def write_features_h5(path: Path, feats, coords=None, *, chunks=32, feat_attrs=None, coord_attrs=None,
                      imgs=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("features", data=feats, chunks=(max(1, min(chunks, len(feats) or 1)),) + feats.shape[1:],
                              maxshape=(None,) + feats.shape[1:])
        for k, v in (feat_attrs or {}).items():
            ds.attrs[k] = v
        if coords is not None:
            c = f.create_dataset("coords", data=coords)
            for k, v in (coord_attrs or {}).items():
                c.attrs[k] = v
        if imgs is not None:
            f.create_dataset("imgs", data=imgs)
    return path


def write_patches_h5(path: Path, coords, *, patch_size=64, level=0, downsample=1.0, trident=False,
                     imgs_attrs=None, patch_px=None) -> Path:
    """CLAM fp patches (attrs on coords), TRIDENT patches, or legacy (``imgs_attrs``: imgs + no coords attrs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        c = f.create_dataset("coords", data=coords, chunks=(1, 2), maxshape=(None, 2))
        if imgs_attrs is not None:
            side = patch_px or patch_size
            im = f.create_dataset("imgs", data=np.zeros((len(coords), side, side, 3), np.uint8))
            for k, v in imgs_attrs.items():
                im.attrs[k] = v
        elif trident:
            c.attrs.update({"patch_size": patch_size, "patch_size_level0": patch_size * downsample,
                            "level0_magnification": 40, "target_magnification": 20, "overlap": 0,
                            "name": path.stem, "savetodir": "None"})
        else:
            c.attrs.update({"patch_size": patch_size, "patch_level": level,
                            "downsample": np.array([downsample, downsample]),
                            "level_dim": np.array([4096, 4096]), "downsampled_level_dim": np.array([4096, 4096]),
                            "name": path.stem, "save_path": str(path.parent)})
    return path


def write_pt(path: Path, feats, *, numpy_payload=False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(feats if numpy_payload else torch.from_numpy(np.ascontiguousarray(feats)), path)
    return path


def make_clam(root: Path, slides: dict[str, int], *, d=8, patch=64, pt=True, h5=True, patches=True,
              coords_dtype=np.int32, seed=0, dtype=np.float32) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CLAM fp feat_dir: h5_files/, pt_files/, patches/. Returns {sid: (features, coords)}."""
    out = {}
    for k, (sid, n) in enumerate(slides.items()):
        f, c = features(n, d, seed + k, dtype), grid_coords(n, patch)
        if h5:
            write_features_h5(root / "h5_files" / f"{sid}.h5", f, c.astype(coords_dtype))
        if pt:
            write_pt(root / "pt_files" / f"{sid}.pt", f)
        if patches:
            write_patches_h5(root / "patches" / f"{sid}.h5", c, patch_size=patch)
        out[sid] = (f, c)
    return out


def make_trident(job: Path, slides: dict[str, int], *, encoder="uni_v1", d=8, patch=64, dtype=np.float16,
                 saveas="h5", cfg="20x_64px_0px_overlap") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for k, (sid, n) in enumerate(slides.items()):
        f, c = features(n, d, k, dtype), grid_coords(n, patch)
        fdir = job / cfg / f"features_{encoder}"
        if saveas == "h5":
            write_features_h5(fdir / f"{sid}.h5", f, c, chunks=1, feat_attrs={"encoder": encoder, "name": sid},
                              coord_attrs={"patch_size": patch, "patch_size_level0": patch})
        else:
            write_pt(fdir / f"{sid}.pt", f, numpy_payload=True)
        write_patches_h5(job / cfg / "patches" / f"{sid}_patches.h5", c, patch_size=patch, trident=True)
        out[sid] = (f, c)
    return out


def segments_list(masks: list[np.ndarray], *, start=(0, 0), vis_level=0, ratio=4, patch_size=64) -> list:
    """A SAM-MIL Segments list [image_info, records...] for bool masks (H, W)."""
    H, W = masks[0].shape if masks else (16, 16)
    info = {"patch_size": patch_size, "start_x": np.int32(start[0]), "start_y": np.int32(start[1]),
            "stop_x": np.int32(start[0] + W * ratio), "stop_y": np.int32(start[1] + H * ratio),
            "w": np.int32(W * ratio), "h": np.int32(H * ratio), "vis_level": vis_level, "downsample_ratio": ratio}
    recs = []
    for m in masks:
        ys, xs = np.nonzero(m)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())] if len(xs) else [0] * 4
        recs.append({"segmentation": m.astype(bool), "area": int(m.sum()), "bbox": bbox, "predicted_iou": 0.9,
                     "point_coords": [[0.0, 0.0]], "stability_score": 0.9, "crop_box": [0, 0, W, H]})
    return [info] + recs


def write_segments(path: Path, seg_list: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(seg_list, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def rect_mask(H, W, x0, y0, x1, y1) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def write_process_list(path: Path, names: list[str], status="processed") -> Path:
    rows = [f"{n},0,{status},0,15,11,2,False,none,none,1.0,1.0,2,0,50,True,four_pt" for n in names]
    path.write_text("\n".join([PL_HEADER] + rows) + "\n")
    return path


class _Evil:
    """Pickles to ``os.system('touch MARKER')``: must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def write_evil_pickle(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump([{"start_x": 0}, _Evil(marker)], f)
    return path


def file_hashes(root: Path) -> dict[str, tuple[int, str]]:
    import hashlib
    return {str(p): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def make_segmented_cohort(root, n_slides: int = 3, n: int = 40, seed: int = 0) -> dict:
    """CLAM archive (h5 + pt + patches) + Segments pickles (D = 4; patch 64 = 16 SAM px), masks on an 8x5 grid."""
    data = make_clam(root, {f"s{i}": n for i in range(n_slides)}, seed=seed)
    for i in range(n_slides):
        H, W = 8 * 16, 5 * 16
        masks = [rect_mask(H, W, 0, 0, W, H // 2), rect_mask(H, W, 0, 0, 16 * (i + 1), 16),
                 rect_mask(H, W, 70, 120, 80, 128)]
        write_segments(root / "segments" / f"s{i}.pkl", segments_list(masks, ratio=4, patch_size=64))
    return data

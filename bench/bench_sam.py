"""SAM pass speed: seconds per slide and the share of time spent outside the model.

Runs the same code path as ``clam2sam convert --sam-checkpoint`` (SamProvider: slide read, SAM,
cache write) on one real slide, with random-weight checkpoints written to a temporary folder (no real
weights needed: a random vit_b / vit_h has exactly the compute of the real one).

    .venv/bin/python bench/bench_sam.py          # tiny (SAM-MIL defaults) + vit_b (one image, 64 points) on CPU
    .venv/bin/python bench/bench_sam.py --models vit_h --device cuda --slides a.svs b.svs --repeat 2

Timing columns (seconds, per slide): ``read`` (open slide, read region, resize), ``model_s`` (image
encoder + prompt encoder + mask decoder calls), ``generate`` (the whole SamAutomaticMaskGenerator: model
plus point grid, stability scores, thresholding, RLE encoding of every candidate mask, NMS),
``cache`` (writing the compact cache), ``total`` (the provider call), ``outside`` = total - model
(``outside_share`` = outside / total).
Model load time is reported separately (once per process). Results are printed and written as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clam2sam.sam import cache as sam_cache  # noqa: E402

from clam2sam.sam import model as sam_model
from clam2sam.sam.segment_pass import SamConfig, SamParams, SamProvider  # noqa: E402

DEFAULT_SLIDE = Path("/work/shared/data/cmu_small_region.svs")
DEFAULT_COORDS = Path("/work/shared/fixtures/reference/clam/patches/cmu_small_region.h5")


def coords_for(slide: Path, coords_h5: Path | None) -> tuple[np.ndarray, int]:
    """Patch coords of the slide (CLAM patches h5) or a 512-px grid over the whole slide."""
    if coords_h5 is not None and coords_h5.is_file():
        with h5py.File(coords_h5, "r") as f:
            return f["coords"][:].astype(np.int64), int(f["coords"].attrs.get("patch_size", 256))
    import openslide

    with openslide.OpenSlide(str(slide)) as s:
        w, h = s.dimensions
    xs, ys = np.meshgrid(np.arange(0, w - 256, 512), np.arange(0, h - 256, 512), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64), 512


def bench_one(model_type: str, ckpt: Path, slide: Path, coords, ps, params: SamParams, device: str, repeat: int,
              workdir: Path) -> list[dict]:
    rows = []
    for r in range(repeat):
        cache = workdir / f"cache_{model_type}_{r}"
        shutil.rmtree(cache, ignore_errors=True)  # always a real SAM run
        prov = SamProvider(SamConfig(model_type=model_type, checkpoint=str(ckpt), device=device, params=params,
                                     slides_dir=str(slide.parent), cache_dir=str(cache), verbose=False))
        t0 = time.perf_counter()
        ms = prov(slide.stem, coords, ps, slide)
        wall = time.perf_counter() - t0
        s = ms.provenance["seconds"]
        load = s["model_load"] if r == 0 else 0.0  # the model is loaded once per process
        total = wall - load
        rows.append({
            "model_type": model_type, "device": ms.provenance["device"], "slide": slide.name, "repeat": r,
            "image": f"{ms.geometry.width}x{ms.geometry.height}", "masks": ms.n_masks,
            "model_load": round(load, 3), "read": s["read_image"], "model_s": s["model"], "encoder_s": s["encoder"],
            "decoder_s": s["decoder"], "n_images": ms.provenance["n_images"], "n_batches": ms.provenance["n_batches"],
            "generate": s["generate"],
            "cache": s.get("write_cache", 0.0), "total": round(total, 3),
            "outside": round(total - s["model"], 3), "outside_share": round((total - s["model"]) / total, 3),
            "cache_bytes": sam_cache.disk_bytes(cache), "dense_bytes": int(ms.masks.size),
            "params": asdict(params)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,vit_b", help="comma list of tiny, vit_b, vit_l, vit_h")
    ap.add_argument("--slides", nargs="+", type=Path, default=[DEFAULT_SLIDE])
    ap.add_argument("--coords", type=Path, default=DEFAULT_COORDS, help="CLAM patches h5 for the first slide")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--points-per-side", type=int, default=None,
                    help="default: SAM-MIL's 32, but 8 for the ViTs on CPU (one batch of 64 points)")
    ap.add_argument("--crop-n-layers", type=int, default=None,
                    help="default: SAM-MIL's 1, but 0 for the ViTs on CPU (one image embedding)")
    ap.add_argument("--thresh", type=float, default=0.6, help="pred_iou and stability thresholds (SAM-MIL: 0.6)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results_sam.json")
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args(argv)
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="bench_sam_"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for mt in a.models.split(","):
        ckpt = workdir / f"random_{mt}.pth"
        if not ckpt.exists():
            t = time.perf_counter()
            sam_model.save_random_checkpoint(mt, ckpt, seed=0)
            print(f"wrote random {mt} checkpoint ({ckpt.stat().st_size / 1e6:.0f} MB) in "
                  f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
        vit_on_cpu = mt != "tiny" and a.device == "cpu"
        crop = a.crop_n_layers if a.crop_n_layers is not None else (0 if vit_on_cpu else 1)
        pps = a.points_per_side if a.points_per_side is not None else (8 if vit_on_cpu else 32)
        params = replace(SamParams(), points_per_side=pps, crop_n_layers=crop,
                         pred_iou_thresh=a.thresh, stability_score_thresh=a.thresh)
        for i, slide in enumerate(a.slides):
            coords, ps = coords_for(slide, a.coords if i == 0 else None)
            rows += bench_one(mt, ckpt, slide, coords, ps, params, a.device, a.repeat, workdir)
            print(json.dumps(rows[-1]), file=sys.stderr)
    meta = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    cols = ("model_type", "device", "slide", "image", "masks", "n_images", "n_batches", "read", "encoder_s",
            "decoder_s", "generate", "cache", "total", "outside_share")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The SAM pass: slide -> tissue region -> SAM image -> SamAutomaticMaskGenerator -> MaskSet (+ cache).

:class:`SamProvider` is the segment provider that ``convert_cohort`` calls once per slide::

    provider(slide_id, coords (N, 2) int64 level-0, patch_size_level0, slide_path | None) -> MaskSet

It holds only configuration (picklable), so ``clam2sam convert --workers N`` can ship it to worker
processes; the model is loaded lazily, once per process (:func:`clam2sam.sam.model.load_sam` caches it).
With several GPUs and ``--device auto|cuda``, worker k of a pool uses ``cuda:(k mod n_gpus)``; on CPU each
of the N workers uses ``cores / N`` torch threads. A slide whose cache entry was made with the same model,
checkpoint (sha256), parameters, slide file and tissue geometry is answered from the cache without
loading the model.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from clam2sam._lazy import LazyModule
torch = LazyModule("torch")  # imported on first use: keeps CLI start-up fast

from clam2sam.sam import cache as sam_cache

from clam2sam.sam import slide_io
from clam2sam.errors import SamError, UsageError
from clam2sam.masks import MaskSet
from clam2sam.sam.model import LoadedSam, file_sha256, load_sam, resolve_device
from clam2sam.sam.tv_standin import ensure_torchvision


@dataclass(frozen=True)
class SamParams:
    """``SamAutomaticMaskGenerator`` arguments; defaults are SAM-MIL's (step 01), the rest SAM's."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.6
    stability_score_thresh: float = 0.6
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 1
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 2
    min_mask_region_area: int = 0

    def validate(self) -> None:
        if self.points_per_side < 1 or self.points_per_batch < 1:
            raise UsageError("--points-per-side and --points-per-batch must be >= 1")
        if self.crop_n_layers < 0 or self.crop_n_points_downscale_factor < 1:
            raise UsageError("--crop-n-layers must be >= 0 and --crop-n-points-downscale-factor >= 1")
        if self.min_mask_region_area > 0:
            try:
                import cv2  # noqa: F401
            except ImportError as e:
                raise UsageError("--min-mask-region-area > 0 needs OpenCV (segment_anything uses cv2 for it)",
                                 fix="pip install opencv-python-headless, or keep --min-mask-region-area 0 "
                                     "(SAM-MIL's default)") from e


@dataclass(frozen=True)
class SamConfig:
    """Everything the SAM pass needs besides the slide (plain data: picklable)."""

    model_type: str
    checkpoint: str
    device: str = "auto"
    params: SamParams = field(default_factory=SamParams)
    seed: int = 0
    slides_dir: str | None = None
    cache_dir: str | None = None          # None: no cache (results are not reused)
    contours_dir: str | None = None       # CLAM <id>_mask.pkl files (tissue contours)
    workers: int = 1                      # processes sharing the CPU (sets torch threads per process)
    max_read_pixels: int = slide_io.MAX_READ_PIXELS
    verbose: bool = True
    checkpoint_sha256: str | None = None  # filled by build_sam_provider (workers then need not re-hash)


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from clam2sam import __version__

    out = {"clam2sam": __version__, "torchvision": ensure_torchvision()}
    for pkg in ("segment-anything", "torch", "numpy", "openslide-python", "openslide-bin", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


# --------------------------------------------------------------------------------------------- model

def _worker_index() -> int:
    ident = getattr(mp.current_process(), "_identity", ())
    return int(ident[0]) - 1 if ident else 0


def process_device(device: str) -> str:
    """The device this process uses: spreads pool workers over GPUs when several exist."""
    dev = resolve_device(device)
    if dev == "cuda" and torch.cuda.device_count() > 1:
        return f"cuda:{_worker_index() % torch.cuda.device_count()}"
    return dev


def _set_threads(workers: int) -> None:
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def generate_masks(loaded: LoadedSam, image: np.ndarray, params: SamParams, seed: int = 0
                   ) -> tuple[sam_cache.EncodedMasks, dict]:
    """Run ``SamAutomaticMaskGenerator`` on one ``(H, W, 3)`` uint8 image.

    Returns:
        The masks (SAM's RLE, column-major) and timings: ``model_s`` = ``encoder_s`` (image encoder, one
        call per crop image) + ``decoder_s`` (prompt encoder + mask decoder + mask upscaling, one call per
        batch of points), ``generate_s`` (the whole generator), ``n_model_calls``, ``n_images``,
        ``n_batches``.
    """
    from clam2sam.sam.tv_standin import import_segment_anything

    sa = import_segment_anything()
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    gen = sa.SamAutomaticMaskGenerator(loaded.model, output_mode="uncompressed_rle", **asdict(params))
    timing = {"model_s": 0.0, "encoder_s": 0.0, "decoder_s": 0.0, "n_model_calls": 0, "n_images": 0,
              "n_batches": 0}
    pred = gen.predictor
    for name, part, count in (("set_image", "encoder_s", "n_images"), ("predict_torch", "decoder_s", "n_batches")):
        orig = getattr(pred, name)

        def timed(*a, _orig=orig, _part=part, _count=count, **k):
            t = time.perf_counter()
            try:
                return _orig(*a, **k)
            finally:
                if str(loaded.device).startswith("cuda"):
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t
                timing["model_s"] += dt
                timing[_part] += dt
                timing["n_model_calls"] += 1
                timing[_count] += 1
        setattr(pred, name, timed)
    t0 = time.perf_counter()
    with torch.inference_mode():
        records = gen.generate(np.ascontiguousarray(image))
    timing["generate_s"] = time.perf_counter() - t0
    return sam_cache.from_sam_records(records, image.shape[0], image.shape[1]), timing


# ------------------------------------------------------------------------------------------ provider

class SamProvider:
    """Segment provider for ``convert_cohort``: runs (or reuses) the SAM pass for one slide per call."""

    def __init__(self, config: SamConfig):
        config.params.validate()
        self.config = config
        self.stats: list[dict] = []   # one entry per call in this process (slide, masks, seconds, cached)

    # -- configuration
    def with_cache_dir(self, cache_dir: str | os.PathLike | None) -> "SamProvider":
        return SamProvider(replace(self.config, cache_dir=None if cache_dir is None else str(cache_dir)))

    def __getstate__(self):
        return {"config": self.config}

    def __setstate__(self, state):
        self.config = state["config"]
        self.stats = []

    def checkpoint_sha256(self) -> str:
        if self.config.checkpoint_sha256:
            return self.config.checkpoint_sha256
        path = Path(self.config.checkpoint)
        if not path.is_file():
            raise SamError("SAM checkpoint not found", path=path,
                           fix="download sam_vit_h_4b8939.pth (or vit_l/vit_b) and pass it to --sam-checkpoint")
        return file_sha256(path)

    # -- the call
    def __call__(self, slide_id: str, coords: np.ndarray, patch_size_level0, slide_path=None) -> MaskSet:
        t0 = time.perf_counter()
        c = self.config
        if patch_size_level0 is None:
            raise SamError("the patch size at level 0 is unknown, so the tissue region cannot be placed",
                           slide=slide_id, fix="pass --patch-size-level0 PIXELS or --patches-dir")
        path = Path(slide_path) if slide_path else None
        if path is None:
            if not c.slides_dir:
                raise SamError("the SAM pass needs the slide files", slide=slide_id, fix="pass --slides-dir DIR")
            path = slide_io.find_slide(c.slides_dir, slide_id)
        coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        with slide_io.open_slide(path, slide_id) as slide:
            dims = tuple(int(v) for v in slide.dimensions)
            slide_io.check_coords_fit(coords, dims, slide_id=slide_id, path=path)
            box = self._tissue_box(slide_id, coords, patch_size_level0, dims)
            geom = slide_io.plan_geometry(box, slide.level_dimensions)
            key = sam_cache.cache_key(
                format=sam_cache.CACHE_FORMAT, model_type=c.model_type, checkpoint_sha256=self.checkpoint_sha256(),
                params=asdict(c.params), seed=c.seed, geometry=geom.to_dict(), resample=slide_io.RESAMPLE,
                slide_file=path.name, slide_bytes=path.stat().st_size)
            hit = sam_cache.lookup(c.cache_dir, slide_id, key)
            if hit is not None:
                em, geom, attrs = sam_cache.read_cache(c.cache_dir, slide_id)
                prov = dict(attrs["provenance"], cached=True)
                return self._done(slide_id, em.to_maskset(geom, prov), t0, cached=True)
            t_read = time.perf_counter()
            image = slide_io.read_sam_image(slide, geom, max_read_pixels=c.max_read_pixels)  # (H, W, 3) uint8
            read_s = time.perf_counter() - t_read
        _set_threads(c.workers)
        loaded = load_sam(c.model_type, c.checkpoint, process_device(c.device), sha256=c.checkpoint_sha256)
        em, timing = generate_masks(loaded, image, c.params, c.seed)
        prov = {
            "source": "sam-pass", "model_type": c.model_type, "checkpoint": str(c.checkpoint),
            "checkpoint_sha256": loaded.checkpoint_sha256, "params": asdict(c.params), "seed": c.seed,
            "device": loaded.device, "tissue_source": box.source, "resample": slide_io.RESAMPLE,
            "slide_path": str(path), "versions": package_versions(),
            "seconds": {"read_image": round(read_s, 4), "model": round(timing["model_s"], 4),
                        "encoder": round(timing["encoder_s"], 4), "decoder": round(timing["decoder_s"], 4),
                        "generate": round(timing["generate_s"], 4), "model_load": round(loaded.load_seconds, 4)},
            "n_model_calls": timing["n_model_calls"], "n_images": timing["n_images"],
            "n_batches": timing["n_batches"], "cached": False}
        if c.cache_dir is not None:
            t_w = time.perf_counter()
            sam_cache.write_cache(c.cache_dir, slide_id, em, geometry=geom, provenance=prov, key=key,
                                  patch_size=patch_size_level0)
            prov["seconds"]["write_cache"] = round(time.perf_counter() - t_w, 4)
        return self._done(slide_id, em.to_maskset(geom, prov), t0, cached=False)

    def _tissue_box(self, slide_id: str, coords: np.ndarray, ps, dims) -> slide_io.TissueBox:
        c = self.config
        if c.contours_dir:
            p = find_contours_file(c.contours_dir, slide_id)
            if p is not None:
                return slide_io.tissue_box_from_contours(slide_io.load_clam_contours(p, slide_id), dims)
        return slide_io.tissue_box_from_coords(coords, int(round(float(ps))), dims)

    def _done(self, slide_id: str, ms: MaskSet, t0: float, *, cached: bool) -> MaskSet:
        secs = time.perf_counter() - t0
        ms.provenance.setdefault("seconds", {})
        ms.provenance["seconds"] = dict(ms.provenance["seconds"], total_call=round(secs, 4))
        self.stats.append({"slide_id": slide_id, "n_masks": ms.n_masks, "seconds": secs, "cached": cached})
        if self.config.verbose:
            how = "reused from cache" if cached else f"on {ms.provenance.get('device', '?')}"
            print(f"SAM {slide_id}: {ms.n_masks} masks, {secs:.1f} s ({how})", file=sys.stderr, flush=True)
        return ms


def find_contours_file(contours_dir: str | os.PathLike, slide_id: str) -> Path | None:
    """CLAM's ``<slide_id>_mask.pkl`` anywhere under ``contours_dir`` (heatmap folders nest it)."""
    d = Path(contours_dir)
    direct = d / f"{slide_id}_mask.pkl"
    if direct.is_file():
        return direct
    hits = sorted(d.rglob(f"{slide_id}_mask.pkl"))
    return hits[0] if hits else None

"""The SAM pass options of a conversion and the segment provider built from them (no click).

:class:`SamPassOptions` holds the ``clam2sam convert`` SAM flags (same names, without ``--``);
:func:`build_sam_provider` checks them and returns a :class:`~clam2sam.sam.segment_pass.SamProvider`, or
None without a checkpoint.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from clam2sam.errors import UsageError
from clam2sam.sam.segment_pass import SamConfig, SamParams, SamProvider

_D = SamParams()
USER_MODELS = ("vit_h", "vit_l", "vit_b")


@dataclass(frozen=True)
class SamPassOptions:
    """The SAM pass options (the ``clam2sam convert`` flags of the same names); defaults are SAM-MIL's."""

    sam_checkpoint: Path | None = None       # None: no SAM pass (Segments pickles, or no segments)
    sam_model: str = "vit_h"
    device: str = "auto"
    points_per_side: int = _D.points_per_side
    points_per_batch: int = _D.points_per_batch
    pred_iou_thresh: float = _D.pred_iou_thresh
    stability_score_thresh: float = _D.stability_score_thresh
    crop_n_layers: int = _D.crop_n_layers
    crop_n_points_downscale_factor: int = _D.crop_n_points_downscale_factor
    min_mask_region_area: int = _D.min_mask_region_area
    box_nms_thresh: float = _D.box_nms_thresh
    sam_seed: int = 0
    sam_cache: Path | None = None            # default: <store>/sam_cache
    sam_contours_dir: Path | None = None     # CLAM <slide>_mask.pkl tissue contours

    def changed(self) -> list[str]:
        """Names of the options that differ from their defaults (in declaration order)."""
        return [f.name for f in fields(self) if getattr(self, f.name) != f.default]

    def params(self) -> SamParams:
        """The mask generator's arguments among these options (the others keep SamParams' defaults)."""
        names = {f.name for f in fields(SamParams)}
        return SamParams(**{f.name: getattr(self, f.name) for f in fields(self) if f.name in names})


def build_sam_provider(sam: SamPassOptions, *, slides_dir=None, store=None, segments_dir=None, workers: int = 1,
                       verbose: bool = True) -> SamProvider | None:
    """A SAM provider for a conversion, or None without ``sam.sam_checkpoint``.

    Args:
        sam: the SAM pass options.
        slides_dir: the slide files (``--slides-dir``): required with a checkpoint.
        store: the output store (``--out``); the cache defaults to ``<store>/sam_cache``.
        segments_dir: ``--segments-dir`` (excludes the SAM pass).
        workers: processes converting slides (sets torch threads per process).
        verbose: print the SAM pass's progress notes.

    Raises:
        UsageError: SAM options without a checkpoint, no slides_dir, both segments_dir and a checkpoint,
            or a checkpoint that is missing / unsafe / of another model type.
    """
    from clam2sam.errors import SamError
    from clam2sam.sam.model import resolve_device, validate_checkpoint

    if sam.sam_checkpoint is None:
        changed = sam.changed()
        if changed:
            flags = ", ".join("--" + k.replace("_", "-") for k in changed)
            raise UsageError(f"{flags} only apply to the SAM pass", fix="add --sam-checkpoint PATH, or drop them")
        return None
    if not slides_dir:
        raise UsageError("--sam-checkpoint needs the slide files", fix="pass --slides-dir DIR")
    if segments_dir:
        raise UsageError("both --segments-dir and --sam-checkpoint given",
                         fix="use the Segments pickles (drop --sam-checkpoint) or run SAM (drop --segments-dir)")
    cache = sam.sam_cache or (Path(store) / "sam_cache" if store else None)
    try:
        resolve_device(sam.device)
        sha = validate_checkpoint(sam.sam_model, sam.sam_checkpoint)
    except SamError as e:
        raise UsageError(e.message, path=e.path, fix=e.fix) from e
    config = SamConfig(model_type=sam.sam_model, checkpoint=str(Path(sam.sam_checkpoint).resolve()),
                       device=sam.device, params=sam.params(), seed=int(sam.sam_seed),
                       slides_dir=str(slides_dir), cache_dir=None if cache is None else os.fspath(cache),
                       contours_dir=None if sam.sam_contours_dir is None else str(sam.sam_contours_dir),
                       workers=int(workers or 1), checkpoint_sha256=sha, verbose=verbose)
    return SamProvider(config)

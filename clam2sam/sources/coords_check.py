"""Patch coordinates against the slide: level-0 top-lefts must be >= 0 and, when the slide file is known,
inside its level-0 extent. Checked before any Segments pickle is, so that the error names the file the coords
came from (features h5 or patches h5), not the pickle they would disagree with."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from clam2sam.errors import InputFormatError


def check_coords(coords: np.ndarray, slide_id: str, *,
                 coords_path: str | Path | None, slide_dims: tuple[int, int] | None = None,
                 slide_path: str | Path | None = None) -> None:
    """Refuse coords outside the slide.

    Args:
        coords: ``(N, 2)`` int64 level-0 top-left (x, y) of the patch rows (group rows already removed).
        slide_dims: the slide's level-0 ``(width, height)`` when its file was read, else None.

    Raises:
        InputFormatError: naming the slide, the coords file, the first bad patch and the slide extent.
    """
    if len(coords) == 0:
        return
    x, y = coords[:, 0], coords[:, 1]
    neg = (x < 0) | (y < 0)
    if neg.any():
        i = int(np.flatnonzero(neg)[0])
        raise InputFormatError(
            f"{int(neg.sum())} of {len(coords)} patches have negative level-0 coords (e.g. patch {i} at "
            f"({int(x[i])}, {int(y[i])})); coords are top-left corners inside the slide", slide=slide_id,
            path=coords_path, fix="the coords file is damaged or from another tool: re-run patching "
                                  "(create_patches_fp.py / TRIDENT) for this slide")
    if slide_dims is None:
        return
    W0, H0 = (int(v) for v in slide_dims)
    out = (x >= W0) | (y >= H0)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise InputFormatError(
            f"{int(out.sum())} of {len(coords)} patches start outside the slide (e.g. patch {i} at "
            f"({int(x[i])}, {int(y[i])}); the slide{f' {slide_path}' if slide_path else ''} is {W0}x{H0} level-0 "
            "px)", slide=slide_id, path=coords_path,
            fix="the coords belong to another slide or another magnification: check the file names and "
                "--slides-dir, or re-run patching for this slide")

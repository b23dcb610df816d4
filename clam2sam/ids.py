"""Slide ids: one normaliser for every source, and a safe mapping from id to store key.

Ids are always ``str`` (``"001"`` stays ``"001"``). Extensions are stripped compound-aware
(``a.ome.tif`` -> ``a``), unlike CLAM's ``os.path.splitext`` (``a.ome``).
"""
from __future__ import annotations

import re
import urllib.parse

from clam2sam.errors import InputFormatError

# Longest first so that ".ome.tiff" wins over ".tiff".
SLIDE_EXTENSIONS = (
    ".ome.tiff", ".ome.tif", ".ome.zarr", ".svs", ".tiff", ".tif", ".ndpi", ".mrxs", ".scn", ".vms",
    ".vmu", ".bif", ".svslide", ".czi", ".dcm", ".isyntax", ".qptiff", ".jpg", ".jpeg", ".png",
)
FEATURE_EXTENSIONS = (".h5", ".hdf5", ".pt", ".pkl")
_TRIDENT_PATCHES_SUFFIX = "_patches"


def normalise_slide_id(name: object, *, strip_patches_suffix: bool = False) -> str:
    """Return the canonical slide id for a file name, process-list entry or CSV cell.

    Args:
        name: e.g. ``"TCGA-01.svs"``, ``"a.ome.tif"``, ``"slide_1.h5"``, ``1`` (read as text elsewhere).
        strip_patches_suffix: also drop TRIDENT's ``_patches`` suffix (``x_patches.h5`` -> ``x``).

    Returns:
        The id as a string with directory, feature-file extension and slide extension removed.
    """
    s = str(name).strip()
    s = s.replace("\\", "/").rsplit("/", 1)[-1]
    low = s.lower()
    for ext in FEATURE_EXTENSIONS:
        if low.endswith(ext):
            s, low = s[: -len(ext)], low[: -len(ext)]
            break
    for ext in SLIDE_EXTENSIONS:
        if low.endswith(ext) and len(s) > len(ext):
            s = s[: -len(ext)]
            break
    if strip_patches_suffix and s.endswith(_TRIDENT_PATCHES_SUFFIX):
        s = s[: -len(_TRIDENT_PATCHES_SUFFIX)]
    if not s:
        raise InputFormatError(f"empty slide id from {name!r}", fix="check the file name / CSV cell")
    return s


_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def slide_key(slide_id: str) -> str:
    """Store key (one path component) for a slide id; never escapes the store.

    Safe ids are used verbatim; anything else (``/``, ``..``, spaces, leading dot) is percent-encoded,
    so ``"../../x"`` becomes ``"..%2F..%2Fx"`` with its leading dot encoded too.
    """
    if _SAFE.match(slide_id) and slide_id not in (".", ".."):
        return slide_id
    key = urllib.parse.quote(slide_id, safe="")
    if key.startswith("."):
        key = "%2E" + key[1:]
    return key


def key_to_slide_id(key: str) -> str:
    return urllib.parse.unquote(key)

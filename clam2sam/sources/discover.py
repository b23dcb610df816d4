"""Find the slides and their files in a feature archive, and detect the archive's layout.

Layouts (overridable with ``--layout`` and the ``--*-dir`` flags):

* ``trident``: ``<cfg>/features_<encoder>/<id>.(h5|pt)`` + ``<cfg>/patches/<id>_patches.h5``; the archive may
  be the ``<cfg>`` folder or a job folder holding exactly one ``<cfg>``.
* ``sammil``: CLAM folders plus SAM-MIL's ``sam_info/`` or ``seg_files/`` (group rows appended to features).
* ``clam-fp``: ``h5_files/<id>.h5`` and/or ``pt_files/<id>.pt`` (+ ``patches/<id>.h5``), or a flat folder of
  feature ``.h5`` files.
* ``clam-legacy``: like ``clam-fp`` but coordinates in the patch-level frame (an ``imgs`` dataset in the
  patches h5); detected per slide by the reader, or forced for the whole archive with ``--layout``.

``segments/<id>.pkl`` inside the archive is used when ``--segments-dir`` is not given.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clam2sam.errors import InputFormatError, UsageError
from clam2sam.ids import SLIDE_EXTENSIONS, normalise_slide_id

LAYOUTS = ("clam-fp", "clam-legacy", "trident", "sammil")
ROLES = ("features_h5", "features_pt", "patches_h5", "sam_info_h5", "segments_pkl")
_FLAGS = {"features_h5": "--features-dir", "features_pt": "--pt-dir", "patches_h5": "--patches-dir",
          "sam_info_h5": "--sam-info-dir", "segments_pkl": "--segments-dir"}


@dataclass
class SlideFiles:
    """The files of one slide (any may be missing)."""

    slide_id: str
    features_h5: Path | None = None
    features_pt: Path | None = None
    patches_h5: Path | None = None
    sam_info_h5: Path | None = None
    segments_pkl: Path | None = None
    slide_path: Path | None = None

    @property
    def has_features(self) -> bool:
        return self.features_h5 is not None or self.features_pt is not None


@dataclass
class Discovery:
    """What :func:`discover` found."""

    root: Path
    layout: str
    dirs: dict                                   # role -> folder or None
    slides: dict[str, SlideFiles]                # slide id -> files, sorted by id; only slides with features
    duplicates: dict[str, list[str]] = field(default_factory=dict)  # id -> clashing file paths
    hidden: dict[str, Path] = field(default_factory=dict)  # id -> hidden feature file left out (".x.h5")
    encoder: str | None = None
    warnings: list[str] = field(default_factory=list)


def _trident_cfg(root: Path, encoder: str | None) -> tuple[Path, Path, str] | None:
    """Return (cfg dir, features dir, encoder) when ``root`` is a TRIDENT cfg or job folder."""
    cands = [p for p in root.glob("features_*") if p.is_dir()]
    cfg = root
    if not cands:
        cfgs = sorted({p.parent for p in root.glob("*/features_*") if p.is_dir()})
        if not cfgs:
            return None
        if len(cfgs) > 1:
            raise UsageError(f"TRIDENT job folder holds several configurations: {[c.name for c in cfgs]}",
                             path=root, fix="pass one of them as ARCHIVE (e.g. ARCHIVE/20x_256px_0px_overlap)")
        cfg = cfgs[0]
        cands = [p for p in cfg.glob("features_*") if p.is_dir()]
    encs = sorted(p.name[len("features_"):] for p in cands)
    if encoder is None:
        if len(encs) > 1:
            raise UsageError(f"several encoders' features found: {encs}", path=cfg,
                             fix="choose one with --encoder NAME")
        encoder = encs[0]
    elif encoder not in encs:
        raise UsageError(f"no features_{encoder}/ folder (found {encs})", path=cfg, fix="check --encoder")
    return cfg, cfg / f"features_{encoder}", encoder


def _index(folder: Path | None, exts: tuple[str, ...], *, patches_suffix: bool = False,
           dups: dict | None = None, bad: list | None = None, hidden: dict | None = None) -> dict[str, Path]:
    """Map normalised slide id -> file for the files in ``folder`` with one of ``exts``.

    Files whose name gives no slide id (e.g. `` .h5``) are left out and described in ``bad``."""
    out: dict[str, Path] = {}
    if folder is None or not folder.is_dir():
        return out
    apple = 0
    for p in sorted(folder.iterdir()):
        if not p.is_file() or not p.name.lower().endswith(exts):
            continue
        if p.name.startswith("._"):   # macOS AppleDouble metadata beside a copied file: not a feature file
            apple += 1
            continue
        if p.name.startswith("."):
            if bad is not None:
                bad.append(f"{p}: left out: hidden file (its name starts with '.'); rename it without the leading "
                           "dot if it holds a slide's data")
            if hidden is not None:
                try:
                    hidden.setdefault(normalise_slide_id(p.name, strip_patches_suffix=patches_suffix), p)
                except InputFormatError:
                    pass
            continue
        try:
            sid = normalise_slide_id(p.name, strip_patches_suffix=patches_suffix)
        except InputFormatError as e:
            if bad is not None:
                bad.append(f"{p}: left out: {e.message} -- rename the file to <slide id>{p.suffix}")
            continue
        if sid in out and dups is not None:
            dups.setdefault(sid, [str(out[sid])]).append(str(p))
            continue
        out[sid] = p
    if apple and bad is not None:
        bad.append(f"{folder}: left out {apple} macOS metadata file(s) named '._*' (not slide data)")
    return out


def index_slides_dir(slides_dir: Path | None) -> dict[str, Path]:
    """Map slide id -> slide file in ``slides_dir`` (first file wins for clashing ids)."""
    return _index(Path(slides_dir) if slides_dir else None, SLIDE_EXTENSIONS)


def discover(archive: str | Path, *, layout: str | None = None, features_dir: str | Path | None = None,
             pt_dir: str | Path | None = None, patches_dir: str | Path | None = None,
             sam_info_dir: str | Path | None = None, segments_dir: str | Path | None = None,
             slides_dir: str | Path | None = None, encoder: str | None = None) -> Discovery:
    """Locate every slide's files.

    Args:
        archive: the archive folder (CLAM feat_dir, TRIDENT cfg/job folder, SAM-MIL feat_dir, or a flat
            folder of feature h5 files).
        layout: force one of :data:`LAYOUTS` (default: auto-detect).
        features_dir, pt_dir, patches_dir, sam_info_dir, segments_dir, slides_dir: override the folders.
        encoder: TRIDENT encoder (selects ``features_<encoder>``); recorded as provenance otherwise.

    Raises:
        InputFormatError: no recognised layout (names the archive and the flags that help).
        UsageError: bad flag combination or ambiguous TRIDENT folder.
    """
    root = Path(archive)
    if not root.is_dir():
        raise UsageError("archive folder does not exist", path=root, fix="pass the folder holding h5_files/ etc.")
    if layout is not None and layout not in LAYOUTS:
        raise UsageError(f"unknown --layout {layout!r}", fix=f"use one of {LAYOUTS}")
    P = lambda p: Path(p) if p is not None else None  # noqa: E731
    d = {"features_h5": P(features_dir), "features_pt": P(pt_dir), "patches_h5": P(patches_dir),
         "sam_info_h5": P(sam_info_dir), "segments_pkl": P(segments_dir)}
    for role, folder in d.items():
        if folder is not None and not folder.is_dir():
            raise UsageError(f"{_FLAGS[role]} folder does not exist", path=folder, fix="check the path")
    tri = _trident_cfg(root, encoder) if layout in (None, "trident") and features_dir is None else None
    found = layout
    if tri is not None:
        cfg, fdir, encoder = tri
        found = found or "trident"
        d["features_h5"] = d["features_h5"] or fdir
        d["features_pt"] = d["features_pt"] or fdir
        d["patches_h5"] = d["patches_h5"] or (cfg / "patches")
    else:
        if d["features_h5"] is None and (root / "h5_files").is_dir():
            d["features_h5"] = root / "h5_files"
        if d["features_pt"] is None and (root / "pt_files").is_dir():
            d["features_pt"] = root / "pt_files"
        if d["patches_h5"] is None and (root / "patches").is_dir():
            d["patches_h5"] = root / "patches"
        if d["sam_info_h5"] is None and (root / "sam_info").is_dir():
            d["sam_info_h5"] = root / "sam_info"
        if d["features_h5"] is None and d["features_pt"] is None and any(root.glob("*.h5")):
            d["features_h5"] = root  # flat folder of feature files
        if found is None and (d["features_h5"] or d["features_pt"]):
            found = "sammil" if (d["sam_info_h5"] or (root / "seg_files").is_dir()) else "clam-fp"
    if d["segments_pkl"] is None and (root / "segments").is_dir():
        d["segments_pkl"] = root / "segments"
    if found is None or (d["features_h5"] is None and d["features_pt"] is None):
        raise InputFormatError(
            "unknown layout: no h5_files/, pt_files/, features_<encoder>/ or feature .h5 files found",
            path=root, fix="point ARCHIVE at CLAM's --feat_dir, a TRIDENT job folder or a SAM-MIL feat_dir, "
                           "or name the folders with --features-dir/--pt-dir/--patches-dir and --layout")
    dups: dict[str, list[str]] = {}
    bad: list[str] = []
    hidden: dict[str, Path] = {}
    patches_suffix = found == "trident"
    idx = {
        "features_h5": _index(d["features_h5"], (".h5", ".hdf5"), dups=dups,
                              patches_suffix=False, bad=bad, hidden=hidden),
        "features_pt": _index(d["features_pt"], (".pt",), dups=dups, bad=bad, hidden=hidden),
        "patches_h5": _index(d["patches_h5"], (".h5", ".hdf5"), patches_suffix=patches_suffix, bad=bad),
        "sam_info_h5": _index(d["sam_info_h5"], (".h5", ".hdf5"), bad=bad),
        "segments_pkl": _index(d["segments_pkl"], (".pkl",), dups=dups, bad=bad),
    }
    slide_files = index_slides_dir(P(slides_dir))
    ids = sorted(set(idx["features_h5"]) | set(idx["features_pt"]))
    slides = {}
    for sid in ids:
        slides[sid] = SlideFiles(sid, **{r: idx[r].get(sid) for r in ROLES}, slide_path=slide_files.get(sid))
    disc = Discovery(root=root, layout=found, dirs=d, slides=slides, duplicates=dups, encoder=encoder,
                     warnings=list(dict.fromkeys(bad)), hidden={k: v for k, v in hidden.items() if k not in slides})
    if found in ("clam-fp", "clam-legacy", "sammil") and d["features_h5"] is not None and d["features_pt"] is None:
        disc.warnings.append(f"{root}: no pt_files/ folder: cannot tell whether feature extraction completed "
                             "(CLAM writes the .pt last)")
    return disc

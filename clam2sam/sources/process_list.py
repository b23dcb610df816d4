"""CLAM's ``process_list_autogen.csv``, CLAM's dataset CSV (``case_id,slide_id,label``) and mpp CSVs.

Every cell is read as text (``001`` stays ``001``); slide ids go through the one normaliser
(:func:`clam2sam.ids.normalise_slide_id`), so ``a.ome.tif`` in the process list matches ``a.h5``.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from clam2sam.errors import InputFormatError
from clam2sam.ids import normalise_slide_id

PROCESS_LIST_NAME = "process_list_autogen.csv"
STATUSES = ("tbp", "processed", "already_exist", "failed_seg")


def _line_of(data: bytes, pos: int) -> int:
    return data.count(b"\n", 0, pos) + 1


def _read_rows(path: Path, required: tuple[str, ...], what: str,
               hints: dict[str, str] | None = None) -> list[dict[str, str]]:
    """Rows of a UTF-8 CSV with a header; ``hints``: column -> extra advice when that column is missing."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = list(reader)
    except UnicodeDecodeError as e:
        try:
            line = _line_of(path.read_bytes(), e.start)
        except OSError:
            line = "?"
        raise InputFormatError(
            f"{what} is not UTF-8 text: byte 0x{e.object[e.start]:02x} on line {line} (a Latin-1 / Windows-1252 "
            "file, e.g. saved by Excel?)", path=path,
            fix=f"save it as UTF-8 (Excel: 'CSV UTF-8'; or: iconv -f latin1 -t utf-8 {path} > fixed.csv)") from e
    except (OSError, csv.Error) as e:
        raise InputFormatError(f"unreadable {what} ({type(e).__name__}: {e})", path=path,
                               fix="check that the path is a readable comma-separated text file") from e
    header = [h.strip() for h in header if h is not None]
    missing = [c for c in required if c not in header]
    if missing:
        extra = "; ".join(hints[c].replace("{header}", str(header)) for c in missing if hints and c in hints)
        raise InputFormatError(f"{what} lacks column(s) {missing} (has {header})", path=path,
                               fix=extra or f"a {what} needs the columns {list(required)}")
    return [{(k or "").strip(): (v or "").strip() for k, v in r.items() if k is not None} for r in rows]


def _by_id(rows: list[dict[str, str]], path: Path, what: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for r in rows:
        raw = r.get("slide_id", "")
        if not raw:
            continue
        sid = normalise_slide_id(raw)
        if sid in out:
            raise InputFormatError(
                f"duplicate slide id {sid!r} after normalisation ({out[sid]['slide_id']!r} and {raw!r})",
                slide=sid, path=path, fix=f"keep one row per slide in the {what}")
        out[sid] = r
    return out


@dataclass
class ProcessList:
    """Rows of a ``process_list_autogen.csv`` keyed by normalised slide id (values are strings)."""

    path: Path
    rows: dict[str, dict[str, str]]

    def status(self, slide_id: str) -> str | None:
        r = self.rows.get(slide_id)
        return None if r is None else r.get("status")

    def provenance(self, slide_id: str) -> dict | None:
        """The slide's row (segmentation parameters) plus the list's path, for the slide attrs."""
        r = self.rows.get(slide_id)
        return None if r is None else {"path": str(self.path), **r}


def read_process_list(path: str | Path) -> ProcessList:
    """Read a CLAM process list (17 columns; legacy extras are kept as provenance).

    Raises:
        InputFormatError: unreadable, no ``slide_id`` column, duplicate ids after normalisation, or an
            unknown ``status``.
    """
    path = Path(path)
    rows = _read_rows(path, ("slide_id",), "process list")
    for r in rows:
        st = r.get("status")
        if st and st not in STATUSES:
            raise InputFormatError(f"unknown status {st!r} for {r.get('slide_id')!r}", path=path,
                                   fix=f"status must be one of {STATUSES}")
    return ProcessList(path=path, rows=_by_id(rows, path, "process list"))


def read_dataset_csv(path: str | Path, label_col: str = "label") -> dict[str, dict[str, str | None]]:
    """Read CLAM's dataset CSV: slide id -> ``{"case_id", "label"}`` (strings; empty cells -> None)."""
    path = Path(path)
    rows = _read_rows(path, ("slide_id", label_col), "dataset CSV", hints={
        "slide_id": "the slide ids (feature file names without extension) go in a 'slide_id' column",
        label_col: f"name the column that holds the labels with --label-col (one of {{header}}), or add a "
                   f"'{label_col}' column"})
    by = _by_id(rows, path, "dataset CSV")
    return {sid: {"case_id": r.get("case_id") or None, "label": r.get(label_col) or None}
            for sid, r in by.items()}


def read_mpp_csv(path: str | Path) -> dict[str, float]:
    """Read ``slide_id,mpp`` (microns per level-0 pixel)."""
    path = Path(path)
    rows = _read_rows(path, ("slide_id", "mpp"), "mpp CSV")
    out = {}
    for sid, r in _by_id(rows, path, "mpp CSV").items():
        try:
            v = float(r["mpp"])
        except ValueError as e:
            raise InputFormatError(f"mpp {r['mpp']!r} is not a number", slide=sid, path=path,
                                   fix="write microns per level-0 pixel, e.g. 0.25") from e
        if not v > 0:
            raise InputFormatError(f"mpp {v} must be > 0", slide=sid, path=path, fix="fix the value")
        out[sid] = v
    return out

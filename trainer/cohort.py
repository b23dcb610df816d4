"""The cohort of a store: which slides train, with which labels, classes and case ids.

Labels come from the store's slide attr ``label`` or a ``--labels`` CSV (``slide_id,label[,case_id]``);
ids stay strings. Class order: ``--classes`` or the sorted label strings (numeric sort when all labels
are integers), so that for binary tasks "1"/"tumor" is the positive class.

Slides whose metadata is damaged stop the run with the slide named, or, with ``--skip-damaged``, are
left out and listed (``Cohort.excluded``).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clam2sam.errors import Clam2SamError, StoreError, UsageError
from clam2sam.store import schema
from clam2sam.ids import key_to_slide_id, normalise_slide_id
from clam2sam.store.writer import list_slide_keys, open_store

# the arrays a bag is read from (trainer/data.py); their metadata is checked for damage here
BAG_ARRAYS = ("features", "group_features", "segment_ids", "segment_sizes", "segment_sam_area",
              "patch_sam_area")


@dataclass
class Cohort:
    """Slides with their label strings, class indices and case ids (all lists aligned)."""

    slide_ids: list[str]
    labels: list[str]
    case_ids: list[str]
    classes: list[str]
    excluded: list[dict] = field(default_factory=list)   # slides of the store left out: {slide_id, reason}

    @property
    def y(self) -> np.ndarray:
        idx = {c: i for i, c in enumerate(self.classes)}
        return np.array([idx[lab] for lab in self.labels], dtype=np.int64)


def _class_order(labels: list[str], classes: list[str] | None) -> list[str]:
    uniq = sorted(set(labels))
    if classes:
        missing = [u for u in uniq if u not in classes]
        if missing:
            raise UsageError(f"labels {missing} are not in --classes {classes}",
                             fix="list every label value in --classes")
        return list(classes)
    try:
        return sorted(uniq, key=lambda s: float(s))
    except ValueError:
        return uniq


def read_labels_csv(path: str | Path) -> dict[str, tuple[str, str | None]]:
    """``slide_id -> (label, case_id or None)`` from a CSV with a header (slide_id,label[,case_id]).

    A CSV without header (CLAM/SAM-MIL style ``name,label`` rows) is accepted too.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError("labels CSV not found", path=path, fix="pass an existing --labels file")
    rows = [r for r in csv.reader(io.StringIO(_decode_csv(path), newline=""))
            if r and any(c.strip() for c in r)]
    if not rows:
        raise UsageError("labels CSV is empty", path=path)
    head = [c.strip().lower() for c in rows[0]]
    if "label" in head:
        sid_col = next((head.index(c) for c in ("slide_id", "slide", "name", "id") if c in head), 0)
        lab_col = head.index("label")
        case_col = next((head.index(c) for c in ("case_id", "case", "patient", "patient_id") if c in head), None)
        rows = rows[1:]
    else:
        sid_col, lab_col, case_col = 0, 1, (2 if len(rows[0]) > 2 else None)
    out = {}
    for i, r in enumerate(rows, start=2):
        if len(r) <= max(sid_col, lab_col):
            raise UsageError(f"line {i}: expected slide_id,label", path=path)
        try:
            sid = normalise_slide_id(r[sid_col])
        except Clam2SamError as e:          # empty / unusable id cell: name the file and the line
            raise UsageError(f"line {i}: {e.message}", path=path, fix="give every row a slide id") from e
        case = r[case_col].strip() if case_col is not None and case_col < len(r) and r[case_col].strip() else None
        out[sid] = (r[lab_col].strip(), case)
    return out


def _decode_csv(path: Path) -> str:
    """The text of a CSV: UTF-8 (a BOM allowed) or UTF-16 with a BOM; anything else is a UsageError naming
    the line and byte (guessing another encoding could silently change a label)."""
    data = path.read_bytes()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UsageError(f"labels CSV is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}; saved as "
                         "Latin-1 / Windows-1252?)", path=path,
                         fix=f"save it as UTF-8 (Excel: 'CSV UTF-8'; or: iconv -f latin1 -t utf-8 {path} > "
                             "labels_utf8.csv) and pass that file to --labels") from None


DAMAGED_FIX = ("re-convert them (re-run `clam2sam convert` on the archive: it rewrites damaged slides), or pass "
               "--skip-damaged to train without them")


def _damage(store_path: Path, key: str) -> str | None:
    """Why a complete-looking slide cannot be trained on (unreadable group or array metadata), or None.

    Cheap: reads the small ``zarr.json`` files only; damaged chunks are found when the bag is read.
    """
    gdir = store_path / schema.SLIDES_GROUP / key
    for name in BAG_ARRAYS:
        zj = gdir / name / "zarr.json"
        try:
            meta = json.loads(zj.read_bytes())
        except FileNotFoundError:
            return f"array {name!r} missing ({zj})"
        except (OSError, ValueError) as e:
            return f"array {name!r} metadata unreadable ({type(e).__name__}: {str(e)[:80]}; {zj})"
        if not isinstance(meta, dict) or meta.get("node_type") != "array":
            return f"array {name!r} metadata is not a zarr array document ({zj})"
    return None


def _survey(reader, skip_damaged: bool) -> tuple[list[str], list[dict]]:
    """(complete slide ids, excluded [{slide_id, reason}]) of the store; damaged slides raise unless skipped."""
    store_path = Path(reader.path)
    complete, excluded, damaged = [], [], []
    for key in list_slide_keys(store_path, complete_only=False):
        sid = key_to_slide_id(key)
        zj = store_path / schema.SLIDES_GROUP / key / "zarr.json"
        if not zj.exists():
            excluded.append({"slide_id": sid, "reason": "incomplete: its conversion was interrupted before its "
                                                        "metadata was written (re-run `clam2sam convert`)"})
            continue
        try:
            attrs = reader.slide_attrs(sid)
        except StoreError as e:
            damaged.append({"slide_id": sid, "reason": f"damaged: {e.message} ({zj})"})
            continue
        if not attrs.get("complete"):
            excluded.append({"slide_id": sid, "reason": "incomplete: its conversion was interrupted "
                                                        "(re-run `clam2sam convert` to finish it)"})
            continue
        why = _damage(store_path, key)
        if why:
            damaged.append({"slide_id": sid, "reason": f"damaged: {why}"})
            continue
        complete.append(sid)
    if damaged and not skip_damaged:
        listed = "; ".join(f"slide {d['slide_id']!r} ({d['reason']})" for d in damaged[:5])
        raise StoreError(f"{len(damaged)} damaged slide(s): {listed}{' ...' if len(damaged) > 5 else ''}",
                         path=store_path, fix=DAMAGED_FIX)
    return complete, excluded + damaged


def describe_excluded(excluded: list[dict], n_total: int) -> str:
    """One warning line per reason: how many slides of the store are left out, and which."""
    by: dict[str, list[str]] = {}
    for e in excluded:
        by.setdefault(e["reason"].split(":")[0] if e["reason"].startswith(("damaged", "incomplete"))
                      else e["reason"], []).append(e["slide_id"])
    lines = [f"warning: {len(excluded)} of {n_total} slides left out of training:"]
    for reason, ids in by.items():
        shown = ", ".join(ids[:10]) + (f" ... (+{len(ids) - 10})" if len(ids) > 10 else "")
        lines.append(f"  {len(ids)} {reason}: {shown}")
    lines.append("  (the reasons per slide are in results.json, key excluded_slides)")
    return "\n".join(lines)


def load_cohort(store_path: str, labels_csv: str | None = None, classes: list[str] | None = None, *,
                skip_damaged: bool = False) -> Cohort:
    """Slides of the store that have a label, with case ids (fallback: the slide id).

    Slides left out (no label, not in the labels CSV, incomplete, damaged with ``skip_damaged``) are listed
    in ``Cohort.excluded`` with the reason.

    Raises:
        UsageError: labels CSV names slides absent from the store, or fewer than 2 classes.
        StoreError: the store is missing or of another schema; a slide's metadata is damaged (unless
            ``skip_damaged``).
    """
    reader = open_store(store_path)
    in_store, excluded = _survey(reader, skip_damaged)
    if not in_store:
        raise StoreError("store holds no complete slide", path=store_path,
                         fix="run `clam2sam convert` first (or let it finish)")
    sids, labs, cases = [], [], []
    if labels_csv:
        table = read_labels_csv(labels_csv)
        unknown = sorted(set(table) - set(in_store))
        if unknown:
            raise UsageError(f"{len(unknown)} slide(s) of the labels CSV are not in the store: "
                             f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}", path=labels_csv,
                             fix="fix the ids or convert those slides; ids are compared as strings")
        for sid in in_store:
            if sid in table:
                lab, case = table[sid]
                if case is None:
                    case = reader.slide_attrs(sid).get("case_id")
                sids.append(sid), labs.append(lab), cases.append(str(case) if case else sid)
            else:
                excluded.append({"slide_id": sid, "reason": "not in the labels CSV"})
    else:
        for sid in in_store:
            a = reader.slide_attrs(sid)
            if a.get("label") is None or str(a.get("label")) == "":
                excluded.append({"slide_id": sid, "reason": "no label in the store"})
                continue
            sids.append(sid), labs.append(str(a["label"]))
            cases.append(str(a["case_id"]) if a.get("case_id") else sid)
        if not sids:
            raise UsageError("no slide in the store has a label", path=store_path,
                             fix="pass --labels CSV with columns slide_id,label[,case_id]")
    order = _class_order(labs, classes)
    if len(set(labs)) < 2:
        raise UsageError(f"need at least 2 classes, found {sorted(set(labs))}", path=labels_csv or store_path)
    return Cohort(sids, labs, cases, order, excluded)


# ---------------------------------------------------------------------------------------- dataset

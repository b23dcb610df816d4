"""Labels and case ids from CLAM's dataset CSV: matched against the archive's slides, updated in place in a store.

Labels and case ids are metadata: a re-run with a corrected ``--dataset-csv`` rewrites them in the slide groups
that are already complete (one atomic write of the group's ``zarr.json`` each, arrays untouched) and reports which
slides changed. ``samtrain fit --labels`` still overrides the store's labels without rewriting it.

Label cells are stripped of surrounding whitespace when read. Labels that differ only in case (``Normal`` and
``normal``) are kept as written -- they may be distinct classes -- and reported with their counts, so that a typo
is seen before training.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from clam2sam.store import schema
from clam2sam.errors import InputFormatError
from clam2sam.store.fast_write import write_json
from clam2sam.ids import slide_key
from clam2sam.convert.report import Report


def case_clashes(labels: list[str | None]) -> list[str]:
    """One sentence per group of labels that differ only in case, with the count of each."""
    counts = Counter(x for x in labels if x)
    groups: dict[str, list[str]] = {}
    for lab in sorted(counts):
        groups.setdefault(lab.casefold(), []).append(lab)
    return [" and ".join(f"{v!r} ({counts[v]} slide{'s' * (counts[v] != 1)})" for v in vs)
            for vs in groups.values() if len(vs) > 1]


def check_labels_match(labels: dict[str, dict], ids: list[str], csv_path: Path, report: Report,
                       hidden: dict[str, Path] | None = None) -> None:
    """Warn (with counts) about slides without a CSV row and CSV rows without a slide, and about labels that
    differ only in case.

    Raises:
        InputFormatError: the CSV matches none of the slides (every slide would be unlabelled).
    """
    matched = [s for s in ids if s in labels]
    if ids and not matched:
        ex_csv = ", ".join(repr(s) for s in sorted(labels)[:3]) or "none"
        ex_arch = ", ".join(repr(s) for s in ids[:3])
        raise InputFormatError(
            f"the dataset CSV matches none of the {len(ids)} slides (CSV slide ids e.g. {ex_csv}; archive slide "
            f"ids e.g. {ex_arch})", path=csv_path,
            fix="slide_id must be the feature file name without its extension: fix the column, or pass the CSV "
                "that belongs to this archive")
    extra = sorted(set(labels) - set(ids))
    for sid in extra:
        if hidden and sid in hidden:
            report.warn(f"slide {sid!r} is in {csv_path} but its feature file {hidden[sid]} is hidden (name starts "
                        "with '.') and was left out: rename it")
        else:
            report.warn(f"slide {sid!r} is in {csv_path} but has no features (or was not selected)")
    missing = [s for s in ids if s not in labels]
    for sid in missing:
        report.warn(f"slide {sid!r} has no row in {csv_path}: label and case_id left empty")
    if missing:
        report.warn(f"{len(missing)} of {len(ids)} slides have no row in {csv_path} and stay unlabelled")
    for clash in case_clashes([labels[s].get("label") for s in matched]):
        report.warn(f"labels in {csv_path} differ only in case: {clash}; they are different classes for samtrain "
                    "-- write them the same way if they are one class")


def update_labels(writer, rows: dict[str, dict], csv_path: Path, report: Report) -> list[str]:
    """Rewrite the label / case_id of complete slides whose CSV row differs from the store. Returns the slides
    changed (each also reported)."""
    changed = []
    for sid, row in sorted(rows.items()):
        meta_path = Path(writer.path) / schema.SLIDES_GROUP / slide_key(sid) / "zarr.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue  # the slide is redone or reported by the run itself
        attrs = meta.get("attributes", {})
        new = {"label": row.get("label"), "case_id": row.get("case_id")}
        diff = {k: (attrs.get(k), v) for k, v in new.items() if attrs.get(k) != v}
        if not diff:
            continue
        meta["attributes"] = {**attrs, **new}
        try:
            write_json(meta_path, meta)
        except OSError as e:
            from clam2sam.store.writer import write_error
            report.error(str(write_error(e, path=meta_path, slide=sid, what="cannot update the slide's label")))
            continue
        what = "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
        report.warn(f"slide {sid!r}: {what} (from {csv_path}; arrays untouched)")
        changed.append(sid)
    report.labels_updated.extend(changed)
    return changed

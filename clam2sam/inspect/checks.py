"""Integrity checks of a store against itself (``clam2sam inspect --check``).

Each finding is a :class:`Problem` naming the slide and the array; nothing is raised for a corrupt
store. Checks, per complete slide: every array present and readable, dtypes and shapes consistent
(``N`` patches, ``S`` segments, ``S+1`` CSR pointers, ``D`` feature dim), attrs ``n_patches`` /
``n_segments`` equal to the shapes, no NaN/inf in features and group features, CSR well formed,
segment sizes equal member counts, no empty segment, group features equal the mean of their members
(tolerance scaled to the stored float type), ``segment_ids`` consistent with the CSR, per-patch SAM
area consistent with the segment's, um^2 areas consistent with ``mpp``, and the recorded source files
unchanged (size + sha256) when they can be reached.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from clam2sam.store import schema
from clam2sam.errors import Clam2SamError, StoreError
from clam2sam.store.groups import group_features_csr
from clam2sam.store.writer import StoreReader

#: Tolerance for group features = GF_ULPS * eps(stored dtype) * max(1, max |feature|).
GF_ULPS = 64


@dataclass(frozen=True)
class Problem:
    """One integrity problem. ``slide``/``array`` are ``None`` when the problem is store-wide."""

    slide: str | None
    array: str | None
    message: str

    def __str__(self) -> str:
        where = " / ".join(x for x in (f"slide {self.slide!r}" if self.slide is not None else None,
                                        f"array {self.array!r}" if self.array else None) if x)
        return f"{where}: {self.message}" if where else self.message


@dataclass
class CheckResult:
    """Outcome of :func:`check_store`: problems (exit code 1 when any) and notes (e.g. skipped checksums)."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    slides_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"ok": self.ok, "slides_checked": self.slides_checked,
                "problems": [asdict(p) for p in self.problems], "notes": list(self.notes)}


def check_store(path: str | os.PathLike, *, slide_ids: list[str] | None = None, verify_sources: bool = True,
                on_slide: Callable[[str], None] | None = None) -> CheckResult:
    """Check a whole store (or only ``slide_ids``).

    Args:
        path: store directory.
        slide_ids: restrict to these slides (default: every slide, incomplete ones reported).
        verify_sources: re-hash the source files recorded in each slide's ``sources`` attr.
        on_slide: progress callback, called with each slide id once checked.
    """
    res = CheckResult()
    try:
        reader = StoreReader(path)  # validates zarr.json + schema version
    except StoreError as e:
        res.problems.append(Problem(None, None, str(e)))
        return res
    for key in ("feature_dim", "feature_dtype"):
        if reader.attrs.get(key) is None and reader.slide_ids(complete_only=False):
            res.problems.append(Problem(None, None, f"root attr {key!r} missing"))
    if slide_ids is None:
        for sid in reader.incomplete_slide_ids():
            try:
                reader.slide_attrs(sid)
            except StoreError as e:                 # garbage group metadata: damage, not an interruption
                if "not in store" not in e.message:
                    res.problems.append(Problem(sid, None, f"slide metadata damaged ({e.message}): re-run "
                                                           "`clam2sam convert` to rewrite this slide"))
                    continue
            res.problems.append(Problem(sid, None, "slide is incomplete (no completion mark): its conversion "
                                                   "was interrupted; re-run `clam2sam convert` to resume"))
        slide_ids = reader.slide_ids()
    for sid in slide_ids:
        try:
            probs, notes = check_slide(reader, sid, verify_sources=verify_sources)
        except Clam2SamError as e:  # slide missing
            probs, notes = [Problem(sid, None, e.message)], []
        res.problems.extend(probs)
        res.notes.extend(notes)
        res.slides_checked += 1
        if on_slide:
            on_slide(sid)
    return res


def check_slide(reader: StoreReader, sid: str, *, verify_sources: bool = True
                ) -> tuple[list[Problem], list[str]]:
    """All checks of one slide; returns ``(problems, notes)``."""
    probs: list[Problem] = []
    add = (lambda array, msg: probs.append(Problem(sid, array, msg)))
    attrs = reader.slide_attrs(sid)
    if not attrs.get("complete"):
        add(None, "slide is incomplete (no completion mark)")
        return probs, []
    arrays: dict[str, np.ndarray] = {}
    for name in schema.ALL_ARRAYS:
        # every chunk is read and, in stores with per-chunk checksums, its CRC32C verified; a missing shard,
        # a bad array zarr.json or a flipped bit is a problem of this array
        try:
            a = reader.read_array(sid, name)
        except StoreError as e:
            add(name, e.message if "array" in e.message else f"unreadable ({e.message})")
            continue
        want = schema.DTYPES.get(name) or reader.attrs.get("feature_dtype")
        if name == "group_features":
            want = None  # float32 or float64 by rule; checked below
        if want and str(a.dtype) != want:
            add(name, f"dtype {a.dtype} != {want}")
        arrays[name] = a
    if len(arrays) < len(schema.ALL_ARRAYS):
        return probs, []  # the remaining checks need every array

    f, gf = arrays["features"], arrays["group_features"]
    N = f.shape[0]
    S = gf.shape[0] if gf.ndim == 2 else -1
    D = reader.attrs.get("feature_dim")
    shape_ok = _check_shapes(arrays, attrs, N, S, D, add)
    if not shape_ok:
        return probs, []
    for name, a in (("features", f), ("group_features", gf)):
        bad = ~np.isfinite(a)
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1))
            add(name, f"{bad.sum()} NaN/inf values in {len(rows)} rows (first row {rows[0]})")
    if str(gf.dtype) != ("float64" if f.dtype == np.float64 else "float32"):
        add("group_features", f"dtype {gf.dtype} (expected float32, float64 for float64 features)")

    indptr, indices, sizes = arrays["member_indptr"], arrays["member_indices"], arrays["segment_sizes"]
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != len(indices):
        add("member_indptr", "not a valid CSR pointer (must start at 0, not decrease, end at len(member_indices))")
        return probs, []
    if len(indices) and (indices.min() < 0 or indices.max() >= N):
        add("member_indices", f"patch index out of range 0..{N - 1}")
        return probs, []
    counts = np.diff(indptr)
    diff = np.flatnonzero(sizes != counts)
    if diff.size:
        k = diff[0]
        add("segment_sizes", f"{diff.size} segments whose size differs from their member count "
                             f"(segment {k}: size {sizes[k]}, {counts[k]} members)")
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        add("member_indptr", f"{empty.size} segments without members (first: {empty[0]})")
    _check_group_means(f, gf, indptr, indices, counts, add)
    rule = attrs.get("membership") or reader.attrs.get("membership")
    _check_segment_ids(arrays, N, S, rule, add)
    _check_areas(arrays, attrs, add)
    notes = _check_sources(sid, attrs.get("sources") or [], reader.path, add) if verify_sources else []
    return probs, notes


def _check_shapes(arrays, attrs, N, S, D, add) -> bool:
    ok = True
    f, gf = arrays["features"], arrays["group_features"]
    expected = {"coords": (N, 2), "segment_ids": (N,), "patch_sam_area": (N,),
                "member_indptr": (S + 1,)}
    expected.update({n: (S,) for n in schema.SEGMENT_ARRAYS if n != "group_features"})
    if f.ndim != 2:
        add("features", f"shape {f.shape} is not (N, D)")
        return False
    if D is not None and f.shape[1] != D:
        add("features", f"feature dim {f.shape[1]} != store feature_dim {D}")
        ok = False
    if gf.ndim != 2 or gf.shape[1] != f.shape[1]:
        add("group_features", f"shape {gf.shape} != (S, {f.shape[1]})")
        return False
    for name, shp in expected.items():
        if arrays[name].shape != shp:
            add(name, f"shape {arrays[name].shape} != {shp} (N={N} patches, S={S} segments): truncated or "
                      "inconsistent array")
            ok = False
    if arrays["member_indices"].ndim != 1:
        add("member_indices", f"shape {arrays['member_indices'].shape} is not (M,)")
        ok = False
    if attrs.get("n_patches") is not None and attrs["n_patches"] != N:
        add("features", f"{N} rows but slide attr n_patches = {attrs['n_patches']}: truncated array?")
        ok = False
    if attrs.get("n_segments") is not None and attrs["n_segments"] != S:
        add("group_features", f"{S} rows but slide attr n_segments = {attrs['n_segments']}: truncated array?")
        ok = False
    return ok


def _check_group_means(f, gf, indptr, indices, counts, add) -> None:
    if not len(gf):
        return
    nonempty = counts > 0
    want = group_features_csr(f, indptr, indices, out_dtype=np.float64)
    scale = max(1.0, float(np.nanmax(np.abs(f))) if f.size else 1.0)
    tol = GF_ULPS * float(np.finfo(gf.dtype if gf.dtype.kind == "f" else np.float32).eps) * scale
    err = np.abs(gf.astype(np.float64) - want)
    err[~nonempty] = 0.0
    err = np.where(np.isnan(err), np.inf, err)
    bad = np.flatnonzero(err.max(axis=1) > tol)
    if bad.size:
        k = bad[0]
        add("group_features", f"{bad.size} group features differ from the mean of their members "
                              f"(segment {k}: max abs error {err[k].max():.3g} > tolerance {tol:.3g})")


def _check_segment_ids(arrays, N, S, rule, add) -> None:
    seg = arrays["segment_ids"]
    indptr, indices = arrays["member_indptr"], arrays["member_indices"]
    if N and (seg.min() < schema.NO_SEGMENT or seg.max() >= S):
        add("segment_ids", f"values outside -1..{S - 1}")
        return
    owner_count = np.bincount(indices.astype(np.int64), minlength=N) if N else np.zeros(0, np.int64)
    seg_of_member = np.repeat(np.arange(S), np.diff(indptr))
    if rule != schema.MEMBERSHIP_REFERENCE:  # a partition: each patch in at most one segment
        multi = np.flatnonzero(owner_count > 1)
        if multi.size:
            add("member_indices", f"{multi.size} patches listed in several segments under the partition "
                                  f"rule {rule!r} (first: patch {multi[0]})")
            return
        owner = np.full(N, schema.NO_SEGMENT, np.int64)
        owner[indices] = seg_of_member
        bad = np.flatnonzero(owner != seg)
        if bad.size:
            i = bad[0]
            add("segment_ids", f"{bad.size} patches whose segment id disagrees with the CSR membership "
                               f"(patch {i}: segment_ids {seg[i]}, CSR {owner[i]})")
    else:  # multi-membership: segment_ids[i] must be one of i's segments, -1 iff in none
        pairs = set(zip(indices.tolist(), seg_of_member.tolist()))
        assigned = np.flatnonzero(seg >= 0)
        bad = [i for i in assigned.tolist() if (i, int(seg[i])) not in pairs]
        bad += np.flatnonzero((seg < 0) & (owner_count > 0)).tolist()
        if bad:
            i = bad[0]
            add("segment_ids", f"{len(bad)} patches whose segment id disagrees with the CSR membership "
                               f"(patch {i}: segment_ids {seg[i]})")
    psa, sam = arrays["patch_sam_area"], arrays["segment_sam_area"]
    expect = np.ones(N, np.int64)
    m = seg >= 0
    expect[m] = sam[seg[m]]
    bad = np.flatnonzero(psa != expect)
    if bad.size:
        i = bad[0]
        add("patch_sam_area", f"{bad.size} patches whose SAM area differs from their segment's (patch {i}: "
                              f"{psa[i]} != {expect[i]}; 1 expected when in no segment)")


def _check_areas(arrays, attrs, add) -> None:
    area, um2 = arrays["segment_areas"], arrays["segment_areas_um2"]
    if np.any(~np.isfinite(area)) or np.any(area < 0):
        add("segment_areas", "negative or non-finite level-0 areas")
        return
    mpp = attrs.get("mpp")
    if mpp:
        if not np.allclose(um2, area * float(mpp) ** 2, rtol=1e-6, equal_nan=False):
            add("segment_areas_um2", f"does not equal segment_areas x mpp^2 (mpp {mpp})")
    elif np.any(np.isfinite(um2)):
        add("segment_areas_um2", "finite um^2 areas but the slide has no mpp")


def _check_sources(sid, sources, store_path: Path, add) -> list[str]:
    """Re-hash reachable source files; a note for each unreachable one."""
    notes = []
    for src in sources:
        if not isinstance(src, dict) or not src.get("path"):
            continue
        p = Path(src["path"])
        cands = [p] if p.is_absolute() else [p, store_path.parent / p]
        found = next((c for c in cands if c.is_file()), None)
        role = src.get("role", "source")
        if found is None:
            notes.append(f"slide {sid!r}: {role} file {src['path']} not reachable; checksum not verified")
            continue
        size = found.stat().st_size
        if src.get("size") is not None and size != int(src["size"]):
            add("sources", f"{role} file {found} changed since conversion: size {size} != recorded {src['size']}")
            continue
        if src.get("sha256"):
            digest = sha256_file(found)
            if digest != src["sha256"]:
                add("sources", f"{role} file {found} changed since conversion: sha256 {digest[:12]}... != "
                          f"recorded {str(src['sha256'])[:12]}...")
    return notes


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            h.update(chunk)
    return h.hexdigest()

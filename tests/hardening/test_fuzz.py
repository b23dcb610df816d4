"""Property-based fuzzing of every reader: random and mutated h5 files, pickles, CSVs and stores.

Every outcome must be success or the project's own error (a Clam2SamError subclass with a message) -- never
another exception, a hang, or an incomplete slide left in a store. Store properties are stronger: a single
flipped bit anywhere in a shard is always detected, and the store's own writer/reader agree with zarr on any
array. Every test is marked ``fuzz``; plain ``pytest`` runs a small CI share of each property, the nightly job
runs every property at its nightly count (at least 10,000 generated inputs in all)::

    pytest -m fuzz tests/hardening/test_fuzz.py --hypothesis-show-statistics    # nightly size
    HYPOTHESIS_PROFILE=long pytest tests/hardening/test_fuzz.py                 # a longer campaign
"""
from __future__ import annotations

import atexit
import contextlib
import pickle
import shutil
import signal
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, strategies as st

from clam2sam.convert.cohort import ConvertOptions, convert_cohort
from clam2sam.sources.discover import SlideFiles
from clam2sam.errors import Clam2SamError
from clam2sam.sources.process_list import read_dataset_csv, read_mpp_csv, read_process_list
from clam2sam.sources.readers import read_slide_inputs
from clam2sam.sources.safe_load import load_pickle, load_pt_array, loads_pickle
from clam2sam.sources.segments_pickle import check_geometry, load_segments_pickle
from clam2sam.store.slide_arrays import SlideArrays
from clam2sam.store.writer import StoreWriter, open_store

from tests.clam2sam import archive_factory as af
from .conftest import fuzz_settings

HANG_S = 20  # one input taking longer than this is a hang
pytestmark = pytest.mark.fuzz


@contextlib.contextmanager
def no_hang(seconds: float = HANG_S):
    def boom(*_):
        raise TimeoutError(f"reader hung for more than {seconds}s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def outcome(fn, *a, **kw):
    """Run a reader: return its result, or the Clam2SamError it raised (anything else fails the test)."""
    with no_hang():
        try:
            return fn(*a, **kw)
        except Clam2SamError as e:
            assert str(e).strip() and e.message, "empty error message"
            return e


# ------------------------------------------------------------------------------------------ byte mutation

mutations = st.lists(st.tuples(st.sampled_from(["flip", "set", "cut", "insert", "zero"]),
                               st.floats(0, 1, exclude_max=True), st.integers(0, 255), st.integers(1, 64)),
                     min_size=1, max_size=6)


def mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op, where, val, n in ops:
        if not b:
            break
        i = int(where * len(b))
        if op == "flip":
            b[i] ^= 1 << (val % 8)
        elif op == "set":
            b[i] = val
        elif op == "cut":
            del b[i:]
        elif op == "insert":
            b[i:i] = bytes([val]) * n
        else:
            b[i:i + n] = bytes(len(b[i:i + n]))
    return bytes(b)


_TMP = Path(tempfile.mkdtemp(prefix="clam2sam-fuzz-"))
atexit.register(shutil.rmtree, _TMP, True)


def _valid_slide(root: Path) -> dict[str, bytes]:
    af.make_clam(root, {"s": 24})
    return {r: (root / f).read_bytes() for r, f in (("h5", "h5_files/s.h5"), ("pt", "pt_files/s.pt"),
                                                    ("patches", "patches/s.h5"))}


VALID = _valid_slide(_TMP / "valid")
SEG = af.segments_list([af.rect_mask(32, 16, 0, 0, 16, 16), af.rect_mask(32, 16, 0, 0, 4, 4)], ratio=4)
VALID_PKL = pickle.dumps(SEG, protocol=pickle.HIGHEST_PROTOCOL)


def _slide_files(d: Path, blobs: dict[str, bytes]) -> SlideFiles:
    d.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, name in (("features_h5", "s.h5"), ("features_pt", "s.pt"), ("patches_h5", "p_s.h5")):
        key = {"features_h5": "h5", "features_pt": "pt", "patches_h5": "patches"}[role]
        if key in blobs:
            (d / name).write_bytes(blobs[key])
            paths[role] = d / name
    return SlideFiles("s", **paths)


def _check_loaded(ls):
    if isinstance(ls, Clam2SamError):
        assert ls.slide == "s" and ls.path, f"error without slide/file: {ls}"
        return
    assert ls.features.ndim == 2 and ls.features.shape[0] > 0 and ls.features.dtype.kind == "f"
    assert ls.coords.shape == (ls.features.shape[0], 2) and ls.coords.dtype == np.int64
    assert np.isfinite(ls.features).all()


@fuzz_settings(80, 1000)
@given(which=st.sampled_from(["h5", "pt", "patches"]), ops=mutations, n=st.integers(0, 10**6))
def test_fuzz_mutated_slide_files(which, ops, n):
    blobs = dict(VALID)
    blobs[which] = mutate(blobs[which], ops)
    files = _slide_files(_TMP / f"mut{n}", blobs)
    try:
        _check_loaded(outcome(read_slide_inputs, files, layout="clam-fp", expect_pt=True))
    finally:
        shutil.rmtree(_TMP / f"mut{n}", ignore_errors=True)


_DTYPES = st.sampled_from(["f2", "f4", "f8", "i1", "i4", "i8", "u1", "u8", "b1", "S3", "c8"])
_SHAPES = st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple)


@st.composite
def h5_contents(draw):
    ds = {}
    for name in draw(st.sets(st.sampled_from(["features", "coords", "imgs", "junk"]), max_size=4)):
        shape = draw(_SHAPES)
        dt = np.dtype(draw(_DTYPES))
        arr = draw(st.sampled_from([np.zeros, np.ones]))(shape, dtype=dt)
        if dt.kind == "f" and arr.size and draw(st.booleans()):
            arr.flat[draw(st.integers(0, arr.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -1e30, -1]))
        if dt.kind in "iu" and arr.size:
            arr = (arr.astype(np.int64) * draw(st.sampled_from([-1, 1, 7, 127]))).astype(dt)
        attrs = draw(st.dictionaries(st.sampled_from(["patch_size", "patch_level", "downsample", "patch_size_level0",
                                                      "encoder", "level_dim", "target_magnification"]),
                                     st.one_of(st.integers(-3, 600), st.floats(allow_nan=True, allow_infinity=True),
                                               st.text(st.characters(exclude_characters="\x00"), max_size=4),
                                               st.just("None"),
                                               st.lists(st.floats(-2, 8), min_size=0, max_size=3)), max_size=4))
        ds[name] = (arr, attrs)
    return ds


def _write_h5(path: Path, ds: dict):
    with h5py.File(path, "w") as f:
        for name, (arr, attrs) in ds.items():
            d = f.create_dataset(name, data=arr)
            for k, v in attrs.items():
                d.attrs[k] = np.asarray(v) if isinstance(v, list) else v


@fuzz_settings(80, 1000)
@given(feat=h5_contents(), patches=st.one_of(st.none(), h5_contents()), n=st.integers(0, 10**6),
       legacy=st.sampled_from([None, 2.0]), ps=st.sampled_from([None, 64.0]))
def test_fuzz_random_h5_structures(feat, patches, n, legacy, ps):
    d = _TMP / f"rnd{n}"
    d.mkdir(parents=True, exist_ok=True)
    _write_h5(d / "s.h5", feat)
    kw = {}
    if patches is not None:
        _write_h5(d / "p.h5", patches)
        kw["patches_h5"] = d / "p.h5"
    files = SlideFiles("s", features_h5=d / "s.h5", **kw)
    try:
        _check_loaded(outcome(read_slide_inputs, files, layout="clam-fp", legacy_downsample=legacy,
                              patch_size_level0=ps))
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------------------ pickles

@fuzz_settings(100, 1000)
@given(ops=mutations)
def test_fuzz_mutated_segments_pickle(ops):
    p = _TMP / "m.pkl"
    p.write_bytes(mutate(VALID_PKL, ops))
    ms = outcome(load_segments_pickle, p, "s", 2.0)
    if not isinstance(ms, Clam2SamError):
        coords = af.grid_coords(24)
        outcome(check_geometry, ms, coords, 64.0, "s", path=p, slide_dims=(4096, 4096))
        from clam2sam.convert.membership import assign_membership
        with no_hang():
            for rule in ("smallest-centre", "reference"):
                try:
                    assign_membership(coords, 64.0, ms, rule)
                except Clam2SamError:
                    pass


_VAL = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(), st.text(max_size=5),
                 st.binary(max_size=5))


@st.composite
def segments_lists(draw):
    """Structure-aware Segments lists: right keys, wrong types / shapes / values."""
    info = {k: draw(st.one_of(_VAL, st.integers(-5, 5))) for k in
            draw(st.sets(st.sampled_from(["start_x", "start_y", "stop_x", "stop_y", "vis_level", "downsample_ratio",
                                          "patch_size", "w", "h"]), min_size=0, max_size=9))}
    if draw(st.booleans()):
        info.update(start_x=0, start_y=0, vis_level=draw(st.integers(0, 2)), downsample_ratio=draw(st.integers(-1, 8)))
    recs = []
    for _ in range(draw(st.integers(0, 3))):
        r = {}
        if draw(st.integers(0, 9)):
            shape = draw(st.lists(st.integers(0, 5), min_size=1, max_size=3).map(tuple))
            r["segmentation"] = np.ones(shape, dtype=draw(st.sampled_from([bool, np.uint8, np.float32, np.int64])))
        for k in ("area", "bbox", "crop_box", "predicted_iou"):
            if draw(st.booleans()):
                r[k] = draw(st.one_of(_VAL, st.lists(st.one_of(st.integers(-9, 9), st.floats()), max_size=5)))
        recs.append(r if draw(st.integers(0, 9)) else draw(_VAL))
    return [info, *recs] if draw(st.integers(0, 9)) else draw(st.one_of(_VAL, st.just(recs)))


@fuzz_settings(100, 1000)
@given(seg=segments_lists(), lds=st.sampled_from([None, 1.0, 2.0, 0.5]))
def test_fuzz_structured_segments(seg, lds):
    p = _TMP / "s.pkl"
    p.write_bytes(pickle.dumps(seg))
    ms = outcome(load_segments_pickle, p, "s", lds)
    if not isinstance(ms, Clam2SamError):
        outcome(check_geometry, ms, af.grid_coords(8), 64.0, "s", path=p)


_OPS = [b"(", b".", b"0", b"1", b"2", b"N", b"]", b"}", b")", b"t", b"l", b"d", b"a", b"e", b"s", b"u", b"b",
        b"R", b"\x85", b"\x86", b"\x87", b"\x88", b"\x89", b"\x94", b"\x95", b"q\x00", b"h\x00", b"K\x05",
        b"J\xff\xff\xff\x7f", b"X\x03\x00\x00\x00abc", b"C\x02hi", b"G" + b"\x00" * 8, b"\x8c\x05numpy\x94",
        b"\x8c\x08builtins\x94", b"\x8c\x05dtype\x94", b"\x8c\x04list\x94", b"\x93", b"cnumpy\ndtype\n",
        b"cbuiltins\nlist\n", b"cos\nsystem\n", b"\x80\x04", b"\x80\x02", b"V\xff\n", b"I12345678901234567890\n"]


@fuzz_settings(100, 1500)
@given(ops=st.lists(st.sampled_from(_OPS), max_size=30), head=st.booleans())
def test_fuzz_random_pickle_opcodes(ops, head):
    data = (b"\x80\x04" if head else b"") + b"".join(ops) + b"."
    got = outcome(loads_pickle, data, slide="s")
    p = _TMP / "o.pkl"
    p.write_bytes(data)
    got2 = outcome(load_pickle, p, slide="s")
    assert type(got) is type(got2) or isinstance(got, Clam2SamError) == isinstance(got2, Clam2SamError)
    outcome(load_segments_pickle, p, "s", 2.0)


@fuzz_settings(60, 500)
@given(ops=mutations)
def test_fuzz_mutated_pt(ops):
    p = _TMP / "m.pt"
    p.write_bytes(mutate(VALID["pt"], ops))
    arr = outcome(load_pt_array, p, slide="s")
    assert isinstance(arr, (np.ndarray, Clam2SamError))


# ------------------------------------------------------------------------------------------ CSVs

_CSV_CELLS = st.one_of(st.text(max_size=8), st.sampled_from(["s0", "s0.svs", "001", "", "tbp", "failed_seg",
                                                             "processed", "0.25", "-1", "nan", "inf", "\"", "a,b"]))


@st.composite
def csv_texts(draw):
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=200))
    header = draw(st.lists(st.sampled_from(["slide_id", "case_id", "label", "mpp", "status", "process", "x", ""]),
                           max_size=6))
    rows = draw(st.lists(st.lists(_CSV_CELLS, max_size=7), max_size=6))
    sep = draw(st.sampled_from([",", ";", ",,"]))
    text = "\n".join(sep.join(r) for r in [header, *rows])
    return text.encode(draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"])), errors="replace")


@fuzz_settings(100, 1200)
@given(data=csv_texts())
def test_fuzz_csvs(data):
    p = _TMP / "x.csv"
    p.write_bytes(data)
    pl = outcome(read_process_list, p)
    if not isinstance(pl, Clam2SamError):
        assert all(isinstance(k, str) and k for k in pl.rows)
    ds = outcome(read_dataset_csv, p)
    if not isinstance(ds, Clam2SamError):
        assert all(isinstance(k, str) and k and "/" not in k for k in ds)
    mpp = outcome(read_mpp_csv, p)
    if not isinstance(mpp, Clam2SamError):
        assert all(v > 0 and np.isfinite(v) for v in mpp.values()), mpp


# ------------------------------------------------------------------------------------------ stores

def _valid_store(path: Path) -> Path:
    rng = np.random.default_rng(0)
    with StoreWriter(path) as w:
        for sid, n in (("a", 50), ("b", 7)):
            w.write_slide(SlideArrays.from_partition(
                sid, rng.normal(size=(n, 8)).astype(np.float32), af.grid_coords(n), rng.integers(-1, 3, n),
                attrs={"patch_size_level0": 64}))
        w.finalize()
    return path


VALID_STORE = _valid_store(_TMP / "valid.zarr")
STORE_FILES = sorted(str(p.relative_to(VALID_STORE)) for p in VALID_STORE.rglob("*") if p.is_file())


def _read_everything(path: Path):
    r = open_store(path)
    for sid in r.slide_ids(complete_only=False):
        s = r.read_slide(sid)
        assert s.features.ndim == 2 and s.coords.shape == (s.n_patches, 2)


@fuzz_settings(100, 800)
@given(target=st.sampled_from(STORE_FILES), ops=mutations, n=st.integers(0, 10**6))
def test_fuzz_corrupt_store(target, ops, n):
    path = _TMP / f"st{n}.zarr"
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(VALID_STORE, path)
    f = path / target
    f.write_bytes(mutate(f.read_bytes(), ops))
    try:
        outcome(_read_everything, path)
        w = outcome(StoreWriter, path)  # resuming into a damaged store: refused or opened, never a crash
        if not isinstance(w, Clam2SamError):
            w.close()
    finally:
        shutil.rmtree(path, ignore_errors=True)


@fuzz_settings(30, 100)
@given(ops=mutations, n=st.integers(0, 10**6))
def test_fuzz_cohort_never_leaves_partial_slides(ops, n):
    """A mutated feature h5 in a cohort: that slide converts or fails; no incomplete slide is left behind."""
    root = _TMP / f"co{n}"
    shutil.rmtree(root, ignore_errors=True)
    af.make_clam(root / "arch", {"s0": 12, "s1": 12}, pt=False)
    h5 = root / "arch/h5_files/s1.h5"
    h5.write_bytes(mutate(h5.read_bytes(), ops))
    with no_hang(60):
        rep = convert_cohort(ConvertOptions(archive=root / "arch", out=root / "c.zarr", skip_errors=True))
    st_ = {o.slide_id: o.status for o in rep.outcomes}
    assert st_["s0"] == "converted" and st_["s1"] in ("converted", "failed")
    r = open_store(root / "c.zarr")
    assert r.incomplete_slide_ids() == []
    if st_["s1"] == "failed":
        reason = rep.by_status("failed")[0].reason
        assert "slide 's1'" in reason and "s1.h5" in reason, reason
    shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------ store: per-chunk CRC

SHARDS = [f for f in STORE_FILES if "/c/" in f]      # the shard files of every array of both slides


@fuzz_settings(60, 1000)
@given(target=st.sampled_from(SHARDS), where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_fuzz_any_flipped_bit_in_a_shard_is_detected(target, where, bit):
    """One flipped bit anywhere in any shard (chunk bytes, chunk CRC, index, index CRC) is an error naming the
    slide and array -- never a silently changed value."""
    f = VALID_STORE / target
    good = f.read_bytes()
    bad = bytearray(good)
    bad[int(where * len(bad))] ^= 1 << bit
    sid, name = target.split("/")[1], target.split("/")[2]
    try:
        f.write_bytes(bytes(bad))
        got = outcome(open_store(VALID_STORE).read_array, sid, name)
        assert isinstance(got, Clam2SamError), f"flip at {int(where * len(bad))} of {target} not detected"
        assert got.slide == sid and repr(name) in got.message, got
    finally:
        f.write_bytes(good)


_ARRAY_DTYPES = st.sampled_from(["float16", "float32", "float64", "int32", "int64", ">f4", ">i8", "uint8"])


@fuzz_settings(40, 800)
@given(n=st.integers(0, 700), cols=st.lists(st.integers(1, 9), max_size=2), dtype=_ARRAY_DTYPES,
       rows_log=st.integers(0, 9), codec=st.sampled_from(["lz4", "zstd", "none"]), checksum=st.booleans(),
       threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**32 - 1))
def test_fuzz_store_writer_and_reader_agree_with_zarr(n, cols, dtype, rows_log, codec, checksum, threads, seed):
    """Any array the store's writer writes reads back exactly, through the store's reader and through zarr."""
    import zarr

    from clam2sam.store.fast_read import read_whole_array
    from clam2sam.store.fast_write import write_array

    shape = (n, *cols)
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    x = (rng.normal(size=shape) * 1000).astype(dt) if dt.kind == "f" else rng.integers(0, 200, shape).astype(dt)
    if n and rng.random() < 0.3:
        x[: rng.integers(0, n + 1)] = 0                          # runs of fill values
    rows = 1 << rows_log
    shard_rows = max(rows, -(-n // rows) * rows)
    adir = _TMP / f"rt{seed}"
    try:
        write_array(adir, x, rows=rows, shard_rows=shard_rows, codec=codec, clevel=3, checksum=checksum)
        want = x.astype(dt.newbyteorder("="))
        got = read_whole_array(adir, threads=threads, missing_shard="error")
        assert got is not None and got.dtype == want.dtype and got.shape == shape
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(zarr.open_array(str(adir), mode="r")[...], want)
    finally:
        shutil.rmtree(adir, ignore_errors=True)


@fuzz_settings(20, 300)
@given(target=st.sampled_from(STORE_FILES), ops=mutations, n=st.integers(0, 10**6))
def test_fuzz_check_never_raises(target, ops, n):
    """``inspect --check`` reports a damaged store as problems (a mutated shard always is one); it never raises."""
    from clam2sam.inspect.checks import check_store

    path = _TMP / f"ck{n}.zarr"
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(VALID_STORE, path)
    f = path / target
    before = f.read_bytes()
    after = mutate(before, ops)
    f.write_bytes(after)
    try:
        with no_hang():
            res = check_store(path, verify_sources=False)
        if "/c/" in target and after != before:
            assert not res.ok, f"{target}: damaged shard passed the check"
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------ samtrain labels CSV

@fuzz_settings(60, 1000)
@given(data=csv_texts())
def test_fuzz_labels_csv(data):
    pytest.importorskip("torch")
    from trainer.data import read_labels_csv

    p = _TMP / "labels.csv"
    p.write_bytes(data)
    got = outcome(read_labels_csv, p)
    if not isinstance(got, Clam2SamError):
        assert all(isinstance(k, str) and isinstance(v[0], str) for k, v in got.items())
    else:
        assert got.path, got


# ------------------------------------------------------------------------------------------ mask bboxes

@fuzz_settings(40, 600)
@given(bboxes=st.lists(st.lists(st.integers(-40, 60), min_size=4, max_size=4), min_size=2, max_size=2))
def test_fuzz_mask_bboxes(bboxes):
    """A Segments pickle's bboxes either contain their masks inside the image, or the pickle is refused."""
    seg = loads_pickle(VALID_PKL)  # the allow-list loader, as for any pickle read
    for r, b in zip(seg[1:], bboxes):
        r["bbox"] = b
    p = _TMP / "bb.pkl"
    p.write_bytes(pickle.dumps(seg))
    ms = outcome(load_segments_pickle, p, "s", 2.0)
    if isinstance(ms, Clam2SamError):
        assert "bbox" in ms.message and "mask" in ms.message, ms
        return
    _, H, W = ms.masks.shape
    for m, (x, y, w, h) in enumerate(ms.bboxes.tolist()):
        ys, xs = np.nonzero(ms.masks[m])
        assert -1 <= x and -1 <= y and w >= 0 and h >= 0 and x + w <= W + 1 and y + h <= H + 1
        assert xs.min() >= x - 1 and ys.min() >= y - 1 and xs.max() <= x + w + 1 and ys.max() <= y + h + 1

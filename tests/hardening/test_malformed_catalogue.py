"""The malformed-input catalogue through `convert --skip-errors`: each bad slide fails with a message naming the
slide, the file and what to do, and the rest of the cohort is converted. (Reader-level checks of the same cases
live in tests/clam2sam/sources/test_readers.py, test_segments_pickle.py, test_convert.py.)"""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from clam2sam.convert.cohort import ConvertOptions, convert_cohort
from clam2sam.store.writer import open_store

from tests.clam2sam import archive_factory as af
from ._helpers import cohort


def _break(arch, case):
    """Damage slide s1 of a 3-slide cohort; return (expected text, file that must be named)."""
    h5, pt, patches = arch / "h5_files/s1.h5", arch / "pt_files/s1.pt", arch / "patches/s1.h5"
    if case == "truncated_h5":
        data = h5.read_bytes(); h5.write_bytes(data[: len(data) // 3])
        return "unreadable or truncated HDF5", h5
    if case == "truncated_h5_tail":  # superblock intact, dataset bytes cut
        data = h5.read_bytes(); h5.write_bytes(data[: len(data) - 200])
        return "s1", h5
    if case == "features_no_coords":
        af.write_features_h5(h5, af.features(40, seed=1)); patches.unlink()
        return "no coordinates and no patches h5", h5
    if case == "pt_h5_rows":
        af.write_pt(pt, af.features(30, seed=1))
        return ".pt has 30 rows but the h5 has 40", pt
    if case == "coords_features_rows":
        af.write_features_h5(h5, af.features(40, seed=1), af.grid_coords(39)); pt.unlink(); patches.unlink()
        return "coords have 39 rows but features have 40", h5
    if case in ("nan", "inf"):
        f = af.features(40, seed=1); f[7, 3] = np.nan if case == "nan" else -np.inf
        af.write_features_h5(h5, f, af.grid_coords(40)); af.write_pt(pt, f)
        return "hold NaN or inf (first: row 7)", h5
    if case == "zero_patches":
        af.write_features_h5(h5, np.zeros((0, 8), np.float32), np.zeros((0, 2), np.int64)); pt.unlink()
        return "empty bag", h5
    if case == "duplicate_ids":
        af.write_features_h5(arch / "h5_files/s1.ome.tif.h5", af.features(5), af.grid_coords(5))
        return "duplicate slide id after normalisation", "s1.ome.tif.h5"
    if case == "mixed_dims":
        af.write_features_h5(h5, af.features(40, d=16, seed=1), af.grid_coords(40)); pt.unlink()
        return "feature dim 16 differs from the store's 8", None
    if case == "mixed_dtypes":
        f = af.features(40, seed=1, dtype=np.float64)
        af.write_features_h5(h5, f, af.grid_coords(40)); pt.unlink()
        return "feature dtype float64 differs from the store's float32", None
    if case == "legacy_no_downsample":
        af.write_patches_h5(patches, af.grid_coords(40), imgs_attrs={"patch_level": 1})
        return "--legacy-downsample", patches
    if case == "pickle_of_another_slide":
        seg = af.segments_list([af.rect_mask(32, 32, 0, 0, 16, 16)], start=(90000, 70000), ratio=4)
        af.write_segments(arch / "segments/s1.pkl", seg)
        return "outside the SAM image", arch / "segments/s1.pkl"
    if case == "truncated_pickle":
        p = arch / "segments/s1.pkl"; p.write_bytes(p.read_bytes()[:100])
        return "not a readable pickle", p
    if case == "integer_features":
        af.write_features_h5(h5, np.ones((40, 8), np.int32), af.grid_coords(40)); pt.unlink()
        return "not floating point", h5
    raise AssertionError(case)


CASES = ["truncated_h5", "truncated_h5_tail", "features_no_coords", "pt_h5_rows", "coords_features_rows", "nan",
         "inf", "zero_patches", "duplicate_ids", "mixed_dims", "mixed_dtypes", "legacy_no_downsample",
         "pickle_of_another_slide", "truncated_pickle", "integer_features"]


@pytest.mark.parametrize("case", CASES)
def test_bad_slide_named_rest_of_cohort_converted(tmp_path, case):
    arch = tmp_path / "arch"
    data = cohort(arch)
    expect, named = _break(arch, case)
    before = af.file_hashes(arch)
    out = tmp_path / "c.zarr"
    rep = convert_cohort(ConvertOptions(archive=arch, out=out, skip_errors=True))
    st = {o.slide_id: o.status for o in rep.outcomes}
    assert st == {"s0": "converted", "s1": "failed", "s2": "converted"}, rep.to_dict()
    reason = rep.by_status("failed")[0].reason
    assert "slide 's1'" in reason and expect in reason and " -- " in reason, reason
    if named is not None:
        assert str(named) in reason, reason
    r = open_store(out)
    assert r.slide_ids() == ["s0", "s2"] and r.incomplete_slide_ids() == []
    np.testing.assert_array_equal(r.read_slide("s2").features, data["s2"][0])
    assert af.file_hashes(arch) == before and rep.return_code == 1


def test_empty_segments_give_no_segments(tmp_path):
    arch = tmp_path / "arch"
    cohort(arch)
    af.write_segments(arch / "segments/s1.pkl", af.segments_list([]))
    rep = convert_cohort(ConvertOptions(archive=arch, out=tmp_path / "c.zarr"))
    assert rep.counts()["converted"] == 3 and rep.return_code == 0
    s1 = open_store(tmp_path / "c.zarr").read_slide("s1")
    assert s1.n_segments == 0 and (s1.segment_ids == -1).all() and (s1.patch_sam_area == 1).all()
    assert any("s1" in w and "no masks" in w and "s1.pkl" in w for w in rep.warnings), rep.warnings


def test_labels_csv_unknown_and_missing_slides(tmp_path):
    arch = tmp_path / "arch"
    cohort(arch)
    ds = tmp_path / "labels.csv"
    ds.write_text("case_id,slide_id,label\np0,s0.svs,tumor\np9,ghost.svs,normal\np2,s2,normal\n")
    rep = convert_cohort(ConvertOptions(archive=arch, out=tmp_path / "c.zarr", dataset_csv=ds))
    assert rep.counts()["converted"] == 3 and rep.return_code == 0
    assert any("'ghost'" in w and str(ds) in w and "no features" in w for w in rep.warnings)
    assert any("'s1'" in w and str(ds) in w and "left empty" in w for w in rep.warnings)
    r = open_store(tmp_path / "c.zarr")
    assert r.slide_attrs("s1")["label"] is None and r.slide_attrs("s0")["label"] == "tumor"


def test_process_list_with_failed_seg_rows(tmp_path):
    arch = tmp_path / "arch"
    cohort(arch)
    pl = af.write_process_list(arch / "process_list_autogen.csv", ["s0.svs", "s1.svs", "s2.svs"])
    pl.write_text(pl.read_text() + "bad.svs,0,failed_seg,0,15,11,2,False,none,none,1.0,1.0,2,0,50,True,four_pt\n")
    rep = convert_cohort(ConvertOptions(archive=arch, out=tmp_path / "c.zarr"))
    assert rep.counts() == {"converted": 3, "skipped": 0, "failed": 0}
    w = [w for w in rep.warnings if "'bad'" in w]
    assert len(w) == 1 and "failed_seg" in w[0] and str(pl) in w[0] and "no features" in w[0], rep.warnings


def test_zero_padded_numeric_ids_stay_strings(tmp_path):
    arch = tmp_path / "arch"
    data = af.make_clam(arch, {"001": 10, "010": 11, "1": 12})
    ds = tmp_path / "labels.csv"
    ds.write_text("case_id,slide_id,label\n007,001.svs,1\n008,010,0\n009,1,1\n")
    rep = convert_cohort(ConvertOptions(archive=arch, out=tmp_path / "c.zarr", dataset_csv=ds))
    assert sorted(o.slide_id for o in rep.by_status("converted")) == ["001", "010", "1"]
    r = open_store(tmp_path / "c.zarr")
    assert r.slide_ids() == ["001", "010", "1"]
    assert sorted(p.name for p in (tmp_path / "c.zarr/slides").iterdir() if p.is_dir()) == ["001", "010", "1"]
    a = r.slide_attrs("001")
    assert a["slide_id"] == "001" and a["case_id"] == "007" and a["label"] == "1"
    assert r.read_slide("010").n_patches == 11
    np.testing.assert_array_equal(r.read_slide("1").features, data["1"][0])


def test_legacy_patch_level_coords_converted_with_flag(tmp_path):
    arch = tmp_path / "arch"
    data = cohort(arch)
    af.write_patches_h5(arch / "patches/s1.h5", af.grid_coords(40), imgs_attrs={"patch_level": 1})
    (arch / "segments/s1.pkl").unlink()  # its masks are in the level-0 frame of the other slides
    with h5py.File(arch / "h5_files/s1.h5", "r") as f:
        c = f["coords"][()]
    rep = convert_cohort(ConvertOptions(archive=arch, out=tmp_path / "c.zarr", legacy_downsample=2))
    assert rep.counts()["converted"] == 3, rep.to_dict()
    s1 = open_store(tmp_path / "c.zarr").read_slide("s1")
    assert s1.attrs["layout"] == "clam-legacy" and s1.attrs["patch_geometry"]["legacy_downsample"] == 2.0
    np.testing.assert_array_equal(s1.coords, c.astype(np.int64) * 2)
    np.testing.assert_array_equal(s1.features, data["s1"][0])

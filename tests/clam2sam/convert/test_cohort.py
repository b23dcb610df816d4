import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from clam2sam.store import schema
from clam2sam.convert.cohort import ConvertOptions, convert_cohort, parse_level_downsamples
from clam2sam.errors import UsageError
from clam2sam.masks import MaskSet, SamGeometry
from clam2sam.store.writer import open_store

from tests.clam2sam import archive_factory as af
from tests.clam2sam.archive_factory import REFERENCE

needs_ref = pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference fixtures not present")


@needs_ref
def test_reference_archive_reproduces_sammil(tmp_path):
    out = tmp_path / "ref.zarr"
    rep = convert_cohort(ConvertOptions(
        archive=REFERENCE / "clam", out=out, segments_dir=REFERENCE / "sammil/segments",
        slides_dir=REFERENCE / "slides", level_downsamples=("ihc_tiled=1:2",), membership="reference"))
    assert rep.counts() == {"converted": 3, "skipped": 0, "failed": 0} and rep.return_code == 0
    assert any("he_tiled" in w and "no Segments pickle" in w for w in rep.warnings)
    r = open_store(out)
    assert r.attrs["membership"] == "reference" and r.attrs["feature_dim"] == 1024
    assert r.attrs["feature_dtype"] == "float32" and r.attrs["n_slides"] == 3
    for sid in ("cmu_small_region", "ihc_tiled"):
        s = r.read_slide(sid)
        with h5py.File(REFERENCE / f"sammil/sam_info/{sid}.h5", "r") as f:
            ra, isg = f["relative_area"][()], f["is_group_feat"][()]
        np.testing.assert_array_equal(s.patch_sam_area, ra[isg == 0])
        with h5py.File(REFERENCE / f"sammil/h5_files/{sid}.h5", "r") as f:
            F, C = f["features"][()], f["coords"][()]
        np.testing.assert_allclose(s.group_features, F[(C == -1).all(1)], atol=1e-5, rtol=0)
        np.testing.assert_array_equal(s.features, F[~(C == -1).all(1)])
        np.testing.assert_array_equal(s.coords, C[~(C == -1).all(1)])
        with h5py.File(REFERENCE / f"sammil/seg_files/{sid}.h5", "r") as f:
            segs = sorted((int(f[k].attrs["seg_index"]), f[k][()]) for k in f)
        assert s.segment_source_index.tolist() == [i for i, _ in segs]
        for k, (_, mc) in enumerate(segs):
            np.testing.assert_array_equal(s.coords[s.member_indices[s.member_indptr[k]:s.member_indptr[k + 1]]], mc)
        assert s.segment_sizes.tolist() == [len(c) for _, c in segs]
        assert s.attrs["layout"] == "clam-fp" and s.attrs["membership"] == "reference"
        assert s.attrs["patch_size_level0"] == 128
    cmu = r.read_slide("cmu_small_region")
    assert cmu.attrs["mpp"] == pytest.approx(0.499)
    np.testing.assert_allclose(cmu.segment_areas, cmu.segment_sam_area * 16.0)
    np.testing.assert_allclose(cmu.segment_areas_um2, cmu.segment_areas * 0.499 ** 2)
    assert cmu.attrs["sam"]["geometry"]["total_downsample"] == 4 and cmu.attrs["sam"]["n_masks"] == 13
    assert cmu.attrs["process_list"]["slide_id"] == "cmu_small_region.svs"
    src = {d["role"]: d for d in cmu.attrs["sources"]}
    assert set(src) == {"features_h5", "features_pt", "patches_h5", "segments_pkl"}
    pkl = REFERENCE / "sammil/segments/cmu_small_region.pkl"
    assert src["segments_pkl"]["sha256"] == hashlib.sha256(pkl.read_bytes()).hexdigest()
    assert src["segments_pkl"]["size"] == pkl.stat().st_size
    h5 = REFERENCE / "clam/h5_files/cmu_small_region.h5"
    assert src["features_h5"]["sha256"] == hashlib.sha256(h5.read_bytes()).hexdigest()
    pt = REFERENCE / "clam/pt_files/cmu_small_region.pt"   # only cross-checked against the h5: size, no hash
    assert src["features_pt"]["sha256"] is None and "cross-check" in src["features_pt"]["sha256_note"]
    assert src["features_pt"]["size"] == pt.stat().st_size
    ihc = r.read_slide("ihc_tiled")
    assert ihc.attrs["mpp"] is None and np.isnan(ihc.segment_areas_um2).all()
    assert ihc.segment_areas.tolist() == [845809 * 4.0] and ihc.attrs["sam"]["geometry"]["level_downsample"] == 2.0
    he = r.read_slide("he_tiled")
    assert he.n_segments == 0 and (he.segment_ids == -1).all() and (he.patch_sam_area == 1).all()
    rj = json.loads((out / "convert_report.json").read_text())
    assert rj["counts"]["converted"] == 3


_cohort = af.make_segmented_cohort


@needs_ref
@pytest.mark.parametrize("checksums,pt_hashed,h5_hashed", [("all", True, True), (False, False, False)])
def test_checksum_policies(tmp_path, checksums, pt_hashed, h5_hashed):
    out = tmp_path / "c.zarr"
    convert_cohort(ConvertOptions(archive=REFERENCE / "clam", out=out, slides=("he_tiled",), checksums=checksums))
    src = {d["role"]: d for d in open_store(out).slide_attrs("he_tiled")["sources"]}
    pt, h5 = REFERENCE / "clam/pt_files/he_tiled.pt", REFERENCE / "clam/h5_files/he_tiled.h5"
    assert src["features_pt"]["sha256"] == (hashlib.sha256(pt.read_bytes()).hexdigest() if pt_hashed else None)
    assert src["features_h5"]["sha256"] == (hashlib.sha256(h5.read_bytes()).hexdigest() if h5_hashed else None)
    assert src["features_pt"]["size"] == pt.stat().st_size and "sha256_note" not in src["features_pt"]


def test_prefetch_is_best_effort(tmp_path):
    from clam2sam.sources.checksums import prefetch

    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 10)
    fut = prefetch([f, tmp_path / "missing.h5", tmp_path])   # a missing file or a folder is not an error
    assert fut is None or fut.result(timeout=10) is None
    assert f.read_bytes() == b"x" * 10



def test_prefetch_advises_the_whole_file_window_by_window(tmp_path, monkeypatch):
    # Linux clamps one WILLNEED to the device's read-ahead size (8 MiB of a 50 MB h5 was cached after a
    # single whole-file call): the prefetch must cover every byte of the file in windows under that clamp
    import os

    from clam2sam.sources import checksums

    if getattr(os, "posix_fadvise", None) is None:
        pytest.skip("no posix_fadvise on this platform")
    f = tmp_path / "a.h5"
    size = 5 * checksums.PREFETCH_WINDOW + 123
    f.write_bytes(b"\0" * size)
    calls = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: calls.append((off, n, advice)))
    checksums._advise_willneed([f])
    assert all(a == os.POSIX_FADV_WILLNEED and 0 < n <= checksums.PREFETCH_WINDOW for _, n, a in calls)
    covered = sorted((off, off + n) for off, n, _ in calls)
    assert covered[0][0] == 0 and covered[-1][1] >= size
    assert all(b[0] <= a[1] for a, b in zip(covered, covered[1:]))         # no gap between windows


def test_prefetch_spans_cover_what_the_pt_cross_check_reads(tmp_path, monkeypatch):
    # the .pt beside an h5 is only cross-checked: its zip records and rows 0, N/2, N-1 must lie in the
    # head / middle / tail spans read ahead (else each small read waits behind the whole read-ahead queue)
    import os
    import re
    import struct
    import zipfile

    import torch

    from clam2sam.sources import checksums
    from clam2sam.convert.slide_job import input_spans
    from clam2sam.sources.discover import SlideFiles

    if getattr(os, "posix_fadvise", None) is None:
        pytest.skip("no posix_fadvise on this platform")
    for n, d in ((9_001, 1024), (20_000, 384), (5, 1024)):
        pt = tmp_path / f"s{n}.pt"
        torch.save(torch.randn(n, d), pt)
        files = SlideFiles(slide_id="s", features_h5=tmp_path / "s.h5", features_pt=pt)
        calls = []
        monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, ln, adv: calls.append((off, off + ln)))
        checksums._advise_willneed([], input_spans(files))
        monkeypatch.undo()
        cached = lambda a, b: any(lo <= a and b <= hi for lo, hi in calls)  # noqa: E731
        with zipfile.ZipFile(pt) as z:
            info = [i for i in z.infolist() if re.search(r"/data/\d+$", i.filename)][0]
            pkl = [i for i in z.infolist() if i.filename.endswith("data.pkl")][0]
        raw = pt.read_bytes()
        start = info.header_offset + 30 + sum(struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30]))
        rb = d * 4
        for r in sorted({0, n // 2, n - 1}):
            assert cached(start + r * rb, start + (r + 1) * rb), (n, d, r)
        assert cached(pkl.header_offset, pkl.header_offset + 30 + pkl.compress_size + 64)   # the pickle
        assert cached(raw.rfind(b"PK\x05\x06"), len(raw))                                  # the zip directory
    assert input_spans(SlideFiles(slide_id="s", features_pt=tmp_path / "s.pt")) == []     # pt-only: read whole



def test_slide_is_opened_ahead_once_and_run_job_takes_it(tmp_path, monkeypatch):
    # OpenSlide's small header reads must not queue behind the slide's own read-ahead: the read-ahead thread
    # opens the slide first and run_job takes that result instead of opening the slide again
    import threading

    from clam2sam.convert import read_ahead as convert_mod
    from clam2sam.convert import slide_job as convert_slide
    from clam2sam.sources.discover import SlideFiles

    svs = REFERENCE / "slides" / "cmu_small_region.svs"
    real = convert_slide.slide_properties
    calls = []
    monkeypatch.setattr(convert_slide, "slide_properties",
                        lambda p: calls.append(threading.current_thread().name) or real(p))
    files = SlideFiles(slide_id="cmu", features_h5=tmp_path / "missing.h5", slide_path=svs)
    fut = convert_mod.read_ahead(files)
    if fut is None:
        pytest.skip("no posix_fadvise on this platform: no read-ahead thread")
    fut.result(timeout=30)
    assert len(calls) == 1 and calls[0].startswith("clam2sam-prefetch")
    props = convert_slide._slide_properties(svs)            # taken, not opened again
    assert len(calls) == 1 and props == real(svs) and props["mpp"] > 0
    convert_slide._slide_properties(svs)                    # taken once: a second call opens the slide
    assert len(calls) == 2
    assert convert_mod.read_ahead(files, props=False).result(timeout=30) is None and len(calls) == 2


def _arrays(path):
    r = open_store(path)
    return {sid: {n: r.read_array(sid, n) for n in schema.ALL_ARRAYS} for sid in r.slide_ids()}


def test_partition_convert_and_resume_identical(tmp_path):
    _cohort(tmp_path / "arch")
    out = tmp_path / "c.zarr"
    opts = ConvertOptions(archive=tmp_path / "arch", out=out)
    rep = convert_cohort(opts)
    assert rep.counts()["converted"] == 3, rep.to_dict()
    ref = _arrays(out)
    s0 = open_store(out).read_slide("s0")
    assert s0.attrs["membership"] == schema.MEMBERSHIP_PARTITION and s0.n_segments == 3
    # x-major grid of 8 rows: patches 0..3 (y < 256) lie in mask 0 (top half); patch 0 in mask 1 (smaller);
    # the last patch (256, 448) has its centre in the small mask 2
    assert s0.segment_ids[:6].tolist() == [1, 0, 0, 0, -1, -1] and s0.segment_source_index.tolist() == [0, 1, 2]
    assert s0.segment_ids[-1] == 2 and s0.segment_sizes.tolist() == [19, 1, 1]
    # interruption: one slide marked incomplete, one slide group gone
    zj = out / "slides/s1/zarr.json"
    meta = json.loads(zj.read_text()); meta["attributes"]["complete"] = False; zj.write_text(json.dumps(meta))
    import shutil
    shutil.rmtree(out / "slides/s2")
    rep2 = convert_cohort(opts)
    assert [(o.slide_id, o.status) for o in rep2.outcomes] == [("s0", "skipped"), ("s1", "converted"),
                                                                ("s2", "converted")]
    got = _arrays(out)
    for sid in ref:
        for n in schema.ALL_ARRAYS:
            np.testing.assert_array_equal(got[sid][n], ref[sid][n], err_msg=f"{sid}/{n}")
    rep3 = convert_cohort(ConvertOptions(archive=tmp_path / "arch", out=out, overwrite=True))
    assert rep3.counts()["converted"] == 3
    with pytest.raises(UsageError, match="membership"):
        convert_cohort(ConvertOptions(archive=tmp_path / "arch", out=out, membership="reference"))


def test_workers_match_single_process(tmp_path, monkeypatch):
    import clam2sam.convert.read_ahead as convert_mod

    _cohort(tmp_path / "arch", n_slides=4)
    advised = []   # every slide's inputs are read ahead, with 1 worker and with 2
    monkeypatch.setattr(convert_mod, "prefetch",
                        lambda paths, spans=(), before=None: advised.append((list(paths), list(spans))))
    h5s = {p.resolve() for p in (tmp_path / "arch").rglob("h5_files/*.h5")}
    assert len(h5s) == 4
    convert_cohort(ConvertOptions(archive=tmp_path / "arch", out=tmp_path / "a.zarr"))
    assert {Path(p).resolve() for paths, _ in advised for p in paths} >= h5s
    advised.clear()
    seen = []
    rep = convert_cohort(ConvertOptions(archive=tmp_path / "arch", out=tmp_path / "b.zarr", workers=2),
                         progress=lambda sid, done, total: seen.append((done, total)))
    assert {Path(p).resolve() for paths, _ in advised for p in paths} >= h5s
    assert rep.counts()["converted"] == 4 and seen[0] == (0, 4) and seen[-1] == (4, 4)
    a, b = _arrays(tmp_path / "a.zarr"), _arrays(tmp_path / "b.zarr")
    assert a.keys() == b.keys()
    for sid in a:
        for n in schema.ALL_ARRAYS:
            np.testing.assert_array_equal(a[sid][n], b[sid][n])
    assert open_store(tmp_path / "b.zarr").attrs["feature_dim"] == 8


def _nan_slide(root, sid="s1"):
    f = af.features(40); f[5, 2] = np.nan
    af.write_features_h5(root / "h5_files" / f"{sid}.h5", f, af.grid_coords(40))
    af.write_pt(root / "pt_files" / f"{sid}.pt", f)


def test_stop_at_first_failure_then_skip_errors(tmp_path):
    _cohort(tmp_path / "arch")
    _nan_slide(tmp_path / "arch")
    out = tmp_path / "c.zarr"
    rep = convert_cohort(ConvertOptions(archive=tmp_path / "arch", out=out))
    assert [(o.slide_id, o.status) for o in rep.outcomes] == [("s0", "converted"), ("s1", "failed")]
    assert rep.return_code == 1 and "NaN" in rep.outcomes[1].reason and "s1.h5" in rep.outcomes[1].reason
    assert any("stopped at the first failure" in w for w in rep.warnings)
    assert open_store(out).slide_ids() == ["s0"]
    rep = convert_cohort(ConvertOptions(archive=tmp_path / "arch", out=out, skip_errors=True))
    assert [(o.slide_id, o.status) for o in rep.outcomes] == [("s0", "skipped"), ("s1", "failed"),
                                                               ("s2", "converted")]
    data = json.loads((out / "convert_report.json").read_text())
    assert data["counts"] == {"converted": 1, "skipped": 1, "failed": 1}


def test_process_list_dataset_csv_and_mpp(tmp_path):
    arch = tmp_path / "arch"
    _cohort(arch)
    af.write_process_list(arch / "process_list_autogen.csv", ["s0.svs", "s1.ome.tif", "gone.svs"])
    ds = tmp_path / "ds.csv"
    ds.write_text("case_id,slide_id,label\np0,s0,tumor\np1,s1.svs,normal\n")
    mpp = tmp_path / "mpp.csv"
    mpp.write_text("slide_id,mpp\ns1,0.25\n")
    rep = convert_cohort(ConvertOptions(archive=arch, out=tmp_path / "c.zarr", dataset_csv=ds, mpp_csv=mpp, mpp=0.5))
    st = {o.slide_id: o.status for o in rep.outcomes}
    assert st == {"s0": "converted", "s1": "converted", "s2": "skipped"}
    assert "not listed" in [o for o in rep.outcomes if o.slide_id == "s2"][0].reason
    assert any("'gone'" in w and "no features" in w for w in rep.warnings)
    r = open_store(tmp_path / "c.zarr")
    a0, a1 = r.slide_attrs("s0"), r.slide_attrs("s1")
    assert (a0["label"], a0["case_id"], a0["mpp"]) == ("tumor", "p0", 0.5)
    assert (a1["label"], a1["case_id"], a1["mpp"]) == ("normal", "p1", 0.25)
    assert a1["process_list"]["slide_id"] == "s1.ome.tif"
    rep = convert_cohort(ConvertOptions(archive=arch, out=tmp_path / "d.zarr", use_process_list=False,
                                        slides=("s2",)))
    assert [o.slide_id for o in rep.by_status("converted")] == ["s2"]


def test_segment_provider_hook_and_no_segments(tmp_path):
    data = af.make_clam(tmp_path / "arch", {"a": 10, "b": 10})
    calls = []

    def provider(sid, coords, ps, slide_path):
        calls.append((sid, coords.shape, ps, slide_path))
        if sid == "b":
            return None
        g = SamGeometry(start_x=0, start_y=0, total_downsample=64, width=8, height=8)
        m = np.zeros((1, 8, 8), bool); m[0, :4, :] = True
        return MaskSet(masks=m, areas=np.array([32]), bboxes=np.array([[0, 0, 7, 3]]), geometry=g,
                       provenance={"source": "test"})

    rep = convert_cohort(ConvertOptions(archive=tmp_path / "arch", out=tmp_path / "c.zarr"), segment_provider=provider)
    assert rep.counts()["converted"] == 2
    assert calls == [("a", (10, 2), 64.0, None), ("b", (10, 2), 64.0, None)]
    r = open_store(tmp_path / "c.zarr")
    a = r.read_slide("a")
    assert a.attrs["sam"]["source"] == "test" and a.n_segments == 1
    np.testing.assert_array_equal(a.segment_ids, (data["a"][1][:, 1] + 32 < 256).astype(np.int32) - 1)
    assert r.read_slide("b").n_segments == 0
    rep = convert_cohort(ConvertOptions(archive=tmp_path / "arch", out=tmp_path / "d.zarr"))
    assert any("no segments" in w for w in rep.warnings) and rep.return_code == 0


@pytest.mark.parametrize("case", ["duplicate", "evil_pickle", "legacy", "vis_level", "geometry", "dim"])
def test_error_catalogue_through_convert(tmp_path, case):
    arch = tmp_path / "arch"
    _cohort(arch, n_slides=1)
    marker = tmp_path / "MARKER"
    if case == "duplicate":
        af.write_features_h5(arch / "h5_files/s0.svs.h5", af.features(4), af.grid_coords(4))
        expect = "duplicate slide id"
    elif case == "evil_pickle":
        af.write_evil_pickle(arch / "segments/s0.pkl", marker)
        expect = "allow-list"
    elif case == "legacy":
        af.write_patches_h5(arch / "patches/s0.h5", af.grid_coords(40), imgs_attrs={"patch_level": 1})
        expect = "--legacy-downsample"
    elif case == "vis_level":
        seg = af.segments_list([af.rect_mask(16, 16, 0, 0, 8, 8)], vis_level=1, ratio=2)
        af.write_segments(arch / "segments/s0.pkl", seg)
        expect = "--level-downsample"
    elif case == "geometry":
        af.write_segments(arch / "segments/s0.pkl", af.segments_list([af.rect_mask(8, 8, 0, 0, 4, 4)], start=(9000, 0)))
        expect = "outside the SAM image"
    elif case == "dim":
        af.make_clam(arch, {"s1": 5}, d=4)
        expect = "feature dim 4 differs"
    rep = convert_cohort(ConvertOptions(archive=arch, out=tmp_path / "c.zarr", skip_errors=True))
    failed = rep.by_status("failed")
    assert len(failed) == 1 and expect in failed[0].reason, rep.to_dict()
    assert " -- " in failed[0].reason  # every error says what to do
    assert not marker.exists()
    if case == "dim":
        assert open_store(tmp_path / "c.zarr").slide_ids() == ["s0"]


def test_sources_untouched_and_parse_level_downsamples(tmp_path):
    _cohort(tmp_path / "arch")
    before = af.file_hashes(tmp_path / "arch")
    convert_cohort(ConvertOptions(archive=tmp_path / "arch", out=tmp_path / "c.zarr", workers=1))
    assert af.file_hashes(tmp_path / "arch") == before
    assert parse_level_downsamples(["1:2", "a.svs=2:4,b=1:1.5"]) == ({1: 2.0}, {"a": {2: 4.0}, "b": {1: 1.5}})
    for bad in ("x", "1:0.5", "a=1"):
        with pytest.raises(UsageError):
            parse_level_downsamples([bad])
    with pytest.raises(UsageError, match="workers"):
        convert_cohort(ConvertOptions(archive=tmp_path / "arch", out=tmp_path / "z.zarr", workers=0))


@needs_ref
def test_sammil_archive_drops_group_rows_and_uses_its_segments(tmp_path):
    rep = convert_cohort(ConvertOptions(archive=REFERENCE / "sammil", out=tmp_path / "s.zarr",
                                        level_downsamples=("1:2",), membership="reference"))
    assert rep.counts()["converted"] == 2
    assert any("taken from the Segments pickle" in w for w in rep.warnings)
    r = open_store(tmp_path / "s.zarr")
    s = r.read_slide("cmu_small_region")
    assert s.attrs["layout"] == "sammil" and s.attrs["n_group_rows_dropped"] == 11 and s.n_patches == 182
    with h5py.File(REFERENCE / "sammil/sam_info/cmu_small_region.h5", "r") as f:
        np.testing.assert_array_equal(s.patch_sam_area, f["relative_area"][:182])


def test_trident_float16_cohort(tmp_path):
    data = af.make_trident(tmp_path / "job", {"a": 12, "b": 9})
    rep = convert_cohort(ConvertOptions(archive=tmp_path / "job", out=tmp_path / "t.zarr"))
    assert rep.counts()["converted"] == 2 and not any("pt" in w for w in rep.warnings)
    r = open_store(tmp_path / "t.zarr")
    assert r.attrs["feature_dtype"] == "float16" and r.attrs["encoder"] == "uni_v1"
    a = r.read_slide("a")
    assert a.features.dtype == np.float16 and a.attrs["layout"] == "trident"
    np.testing.assert_array_equal(a.features, data["a"][0])

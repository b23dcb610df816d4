import pickle
import warnings

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from clam2sam.sam import cache as sc
from clam2sam.cli.main import cli
from clam2sam.errors import StoreError, UsageError
from clam2sam.sam.export import export_segments, image_info_for, write_segments_pickle
from clam2sam.convert.membership import assign_membership
from clam2sam.sources.safe_load import load_pickle
from clam2sam.sources.segments_pickle import load_segments_pickle

from tests.clam2sam._sam_fixtures import REF, REF_PICKLE, cmu_coords

SEG_FILES = REF / "sammil" / "seg_files" / "cmu_small_region.h5"


class _Recorder(pickle.Unpickler):
    def __init__(self, f):
        super().__init__(f)
        self.globals = set()

    def find_class(self, module, name):
        self.globals.add((module, name))
        return super().find_class(module, name)


def _globals_of(path) -> set:
    with open(path, "rb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        r = _Recorder(f)
        r.load()
    return r.globals


def _cache_from_reference(cache_dir):
    """The reference pickle -> our cache (what the SAM pass would have stored for it)."""
    ref = load_pickle(REF_PICKLE)
    ms = load_segments_pickle(REF_PICKLE, "cmu_small_region", 1.0)
    em = sc.from_sam_records(ref[1:], ms.geometry.height, ms.geometry.width)
    sc.write_cache(cache_dir, "cmu_small_region", em, geometry=ms.geometry, provenance={"source": "test"},
                   key="k", patch_size=128)
    return ref, ms


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("exp")
    ref, ms = _cache_from_reference(d / "store" / "sam_cache")
    (d / "store" / "zarr.json").write_text("{}")
    out = export_segments(d / "store", d / "segments")
    return d, ref, ms, out


def test_export_reproduces_the_reference_pickle(exported):
    d, ref, _, out = exported
    assert [o.slide_id for o in out] == ["cmu_small_region"] and out[0].n_masks == 13
    got = load_pickle(d / "segments" / "cmu_small_region.pkl")
    assert isinstance(got, list) and len(got) == len(ref) == 14
    assert list(got[0]) == list(ref[0])
    for k in ref[0]:
        assert got[0][k] == ref[0][k] and type(got[0][k]) is type(ref[0][k]), k  # numpy.int32 bbox values
    for a, b in zip(got[1:], ref[1:]):
        assert list(a) == list(b)  # SAM's key order
        assert a["segmentation"].dtype == bool and np.array_equal(a["segmentation"], b["segmentation"])
        for k in ("area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"):
            assert a[k] == b[k], k
            assert type(a[k]) is type(b[k]), k
        assert [type(v) for v in a["crop_box"]] == [type(v) for v in b["crop_box"]]  # floats stay floats


def test_pickle_uses_only_the_reference_globals(exported):
    d, *_ = exported
    ours = _globals_of(d / "segments" / "cmu_small_region.pkl")
    assert ours <= _globals_of(REF_PICKLE) | {("numpy", "dtype")}
    assert all(not m.startswith("numpy._core") for m, _ in ours)  # readable by numpy 1.x


def test_roundtrip_through_convert_reader_gives_the_same_membership(exported):
    d, _, ms_ref, _ = exported
    back = load_segments_pickle(d / "segments" / "cmu_small_region.pkl", "cmu_small_region", 1.0)
    assert back.geometry == ms_ref.geometry
    assert np.array_equal(back.masks, ms_ref.masks) and np.array_equal(back.bboxes, ms_ref.bboxes)
    coords = cmu_coords()
    for rule in ("smallest-centre", "reference"):
        a = assign_membership(coords, 128, back, rule)
        b = assign_membership(coords, 128, ms_ref, rule)
        assert np.array_equal(a.segment_ids, b.segment_ids) and np.array_equal(a.member_indices, b.member_indices)
    ref_rule = assign_membership(coords, 128, back, "reference")
    with h5py.File(SEG_FILES, "r") as f:  # SAM-MIL's own membership lists
        expect = {int(f[k].attrs["seg_index"]): len(f[k]) for k in f}
    got = dict(zip(ref_rule.segment_source_index.tolist(), np.diff(ref_rule.member_indptr).tolist()))
    assert got == expect


def test_export_is_much_smaller_in_the_cache(exported):
    _, _, _, out = exported
    assert out[0].pickle_bytes > 10 * out[0].cache_bytes  # dense pickle vs compact cache


def test_streamed_pickle_equals_plain_pickle_content(tmp_path):
    masks = [np.random.default_rng(i).random((30, 20)) > 0.5 for i in range(5)]
    shared = [1.0, 2.0]  # the same object in every record: must not become a stale back-reference
    recs = [{"segmentation": m, "area": int(m.sum()), "point_coords": [shared]} for m in masks]
    info = {"start_x": np.int32(3), "vis_level": 0}
    write_segments_pickle(tmp_path / "x.pkl", info, iter(recs))
    from clam2sam.sources.safe_load import load_pickle

    got = load_pickle(tmp_path / "x.pkl")  # our exports load through the same allow-list as any input
    assert got[0] == info and len(got) == 6
    for g, r in zip(got[1:], recs):
        assert np.array_equal(g["segmentation"], r["segmentation"]) and g["area"] == r["area"]
        assert g["point_coords"] == [[1.0, 2.0]]


def test_image_info_for_coordinate_boxes():
    from clam2sam.masks import SamGeometry

    g = SamGeometry(start_x=64, start_y=70, total_downsample=4, width=480, height=724, vis_level=0,
                    downsample_ratio=4, stop_x=1984, stop_y=2967)
    info = image_info_for(g, 128.0)
    assert info["w"] == 1920 and info["h"] == 2897 and type(info["w"]) is np.int32 and info["patch_size"] == 128


def test_export_errors(tmp_path, exported):
    d, *_ = exported
    with pytest.raises(StoreError, match="no SAM results cached here"):
        export_segments(tmp_path, tmp_path / "o")
    with pytest.raises(StoreError, match="no cached SAM result for 'nope'"):
        export_segments(d / "store", tmp_path / "o", slides=["nope"])
    with pytest.raises(UsageError, match="segments pickle exists.*--overwrite"):
        export_segments(d / "store", d / "segments")
    assert export_segments(d / "store", d / "segments", overwrite=True)[0].n_masks == 13


def test_cli_export(tmp_path, exported):
    d, *_ = exported
    r = CliRunner().invoke(cli, ["export-segments", str(d / "store"), "--out", str(tmp_path / "segs")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "segs" / "cmu_small_region.pkl").is_file()
    assert "wrote 1 pickles" in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(cli, ["export-segments", str(empty), "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "no SAM results cached here" in str(r.exception or r.output)

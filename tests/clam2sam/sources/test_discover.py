import pytest

from clam2sam.sources.discover import discover, index_slides_dir
from clam2sam.errors import InputFormatError, UsageError

from tests.clam2sam import archive_factory as af
from tests.clam2sam.archive_factory import REFERENCE

needs_ref = pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference fixtures not present")


@needs_ref
def test_reference_clam_and_sammil_layouts():
    d = discover(REFERENCE / "clam", slides_dir=REFERENCE / "slides")
    assert d.layout == "clam-fp" and list(d.slides) == ["cmu_small_region", "he_tiled", "ihc_tiled"]
    s = d.slides["cmu_small_region"]
    assert s.features_h5.name == "cmu_small_region.h5" and s.features_pt.suffix == ".pt"
    assert s.patches_h5.parent.name == "patches" and s.slide_path.name == "cmu_small_region.svs"
    assert d.slides["ihc_tiled"].slide_path is None and d.dirs["segments_pkl"] is None and not d.warnings
    sm = discover(REFERENCE / "sammil")
    assert sm.layout == "sammil" and list(sm.slides) == ["cmu_small_region", "ihc_tiled"]
    assert sm.slides["ihc_tiled"].segments_pkl.name == "ihc_tiled.pkl"  # ARCHIVE/segments used by default
    assert sm.slides["ihc_tiled"].sam_info_h5.parent.name == "sam_info"


def test_trident_job_and_cfg(tmp_path):
    af.make_trident(tmp_path, {"a": 3, "b": 4})
    for root in (tmp_path, tmp_path / "20x_64px_0px_overlap"):
        d = discover(root)
        assert d.layout == "trident" and d.encoder == "uni_v1" and list(d.slides) == ["a", "b"]
        assert d.slides["a"].patches_h5.name == "a_patches.h5"
    af.make_trident(tmp_path, {"a": 3}, encoder="conch_v1")
    with pytest.raises(UsageError, match="--encoder"):
        discover(tmp_path)
    assert discover(tmp_path, encoder="conch_v1").encoder == "conch_v1"
    with pytest.raises(UsageError, match="no features_x"):
        discover(tmp_path, encoder="x")


def test_flat_folder_pt_only_and_no_pt_warning(tmp_path):
    af.write_features_h5(tmp_path / "flat/s1.h5", af.features(3), af.grid_coords(3))
    d = discover(tmp_path / "flat")
    assert d.layout == "clam-fp" and list(d.slides) == ["s1"]
    assert any("no pt_files" in w for w in d.warnings)
    af.make_clam(tmp_path / "ptonly", {"001": 3}, h5=False)
    d = discover(tmp_path / "ptonly")
    assert list(d.slides) == ["001"] and d.slides["001"].features_h5 is None and not d.warnings


def test_unknown_layout_and_bad_dirs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFormatError) as e:
        discover(tmp_path / "empty")
    assert "unknown layout" in str(e.value) and "--features-dir" in str(e.value)
    with pytest.raises(UsageError, match="does not exist"):
        discover(tmp_path / "nope")
    with pytest.raises(UsageError, match="--segments-dir"):
        discover(tmp_path / "empty", segments_dir=tmp_path / "nope")
    with pytest.raises(UsageError, match="layout"):
        discover(tmp_path / "empty", layout="weird")


def test_duplicate_ids_after_normalisation(tmp_path):
    af.write_features_h5(tmp_path / "h5_files/a.h5", af.features(3), af.grid_coords(3))
    af.write_features_h5(tmp_path / "h5_files/a.ome.tif.h5", af.features(3), af.grid_coords(3))
    d = discover(tmp_path)
    assert "a" in d.duplicates and len(d.duplicates["a"]) == 2


def test_index_slides_dir(tmp_path):
    for n in ("x.svs", "y.ome.tif", "notes.txt"):
        (tmp_path / n).write_bytes(b"")
    assert sorted(index_slides_dir(tmp_path)) == ["x", "y"]
    assert index_slides_dir(None) == {}

import pytest

from clam2sam.errors import InputFormatError
from clam2sam.sources.process_list import read_dataset_csv, read_mpp_csv, read_process_list

from tests.clam2sam import archive_factory as af
from tests.clam2sam.archive_factory import REFERENCE

needs_ref = pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference fixtures not present")


@needs_ref
def test_reference_process_list():
    pl = read_process_list(REFERENCE / "clam/process_list_autogen.csv")
    assert list(pl.rows) == ["cmu_small_region", "he_tiled", "ihc_tiled"]
    assert pl.status("ihc_tiled") == "processed"
    prov = pl.provenance("ihc_tiled")
    assert prov["slide_id"] == "ihc_tiled.tif" and prov["seg_level"] == "2" and prov["a_t"] == "1.0"
    assert prov["contour_fn"] == "four_pt" and len([k for k in prov if k != "path"]) == 17
    assert pl.provenance("zzz") is None


def test_ids_are_strings_and_compound_aware(tmp_path):
    p = af.write_process_list(tmp_path / "pl.csv", ["001.svs", "a.ome.tif", "0042.ndpi"])
    pl = read_process_list(p)
    assert list(pl.rows) == ["001", "a", "0042"]


def test_duplicates_and_bad_status(tmp_path):
    p = af.write_process_list(tmp_path / "pl.csv", ["a.svs", "a.tif"])
    with pytest.raises(InputFormatError, match="duplicate slide id 'a'"):
        read_process_list(p)
    p = af.write_process_list(tmp_path / "pl2.csv", ["a.svs"], status="weird")
    with pytest.raises(InputFormatError, match="unknown status"):
        read_process_list(p)
    (tmp_path / "bad.csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(InputFormatError, match="slide_id"):
        read_process_list(tmp_path / "bad.csv")


def test_dataset_csv(tmp_path):
    p = tmp_path / "ds.csv"
    p.write_text("case_id,slide_id,label,grade\npatient_0,001,tumor,3\npatient_1,002.svs,normal,\n"
                 "patient_1,003,,1\n")
    ds = read_dataset_csv(p)
    assert ds == {"001": {"case_id": "patient_0", "label": "tumor"}, "002": {"case_id": "patient_1", "label": "normal"},
                  "003": {"case_id": "patient_1", "label": None}}
    assert read_dataset_csv(p, label_col="grade")["001"]["label"] == "3"
    with pytest.raises(InputFormatError, match="nope"):
        read_dataset_csv(p, label_col="nope")


def test_mpp_csv(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("slide_id,mpp\n001,0.25\nb.svs,0.5\n")
    assert read_mpp_csv(p) == {"001": 0.25, "b": 0.5}
    p.write_text("slide_id,mpp\n001,abc\n")
    with pytest.raises(InputFormatError, match="not a number"):
        read_mpp_csv(p)

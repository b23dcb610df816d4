import pickle

import numpy as np
import pytest

from clam2sam.errors import InputFormatError, SegmentsError, UnsafeInputError
from clam2sam.sources.segments_pickle import check_geometry, load_segments_pickle

from tests.clam2sam.archive_factory import REFERENCE, rect_mask, segments_list, write_evil_pickle, write_segments

needs_ref = pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference fixtures not present")


@needs_ref
def test_reference_cmu_pickle():
    ms = load_segments_pickle(REFERENCE / "sammil/segments/cmu_small_region.pkl", "cmu_small_region")
    g = ms.geometry
    assert (g.start_x, g.start_y, g.stop_x, g.stop_y) == (64, 70, 1996, 2966)
    assert (g.vis_level, g.downsample_ratio, g.total_downsample, g.width, g.height) == (0, 4, 4, 483, 724)
    assert ms.masks.shape == (13, 724, 483) and ms.masks.dtype == bool
    assert ms.areas[:3].tolist() == [14117, 17400, 4960]
    assert ms.bboxes[0].tolist() == [103, 98, 139, 152]
    np.testing.assert_array_equal(ms.areas, ms.masks.reshape(13, -1).sum(1))
    assert ms.records[0]["crop_box"] == [0.0, 0.0, 324.0, 444.0]
    assert ms.provenance["image_info"]["start_x"] == 64


@needs_ref
def test_reference_ihc_needs_level_downsample():
    p = REFERENCE / "sammil/segments/ihc_tiled.pkl"
    with pytest.raises(SegmentsError) as e:
        load_segments_pickle(p, "ihc_tiled")
    msg = str(e.value)
    assert "ihc_tiled" in msg and "ihc_tiled.pkl" in msg and "--level-downsample" in msg and "vis_level 1" in msg
    ms = load_segments_pickle(p, "ihc_tiled", lambda lv: {1: 2.0}.get(lv))
    assert ms.geometry.total_downsample == 2 and ms.masks.shape == (1, 1022, 1002) and ms.areas.tolist() == [845809]
    assert load_segments_pickle(p, "ihc_tiled", 2.0).geometry.level_downsample == 2.0


def test_disallowed_globals_never_run(tmp_path):
    marker = tmp_path / "PWNED"
    p = write_evil_pickle(tmp_path / "segments" / "s.pkl", marker)
    with pytest.raises(UnsafeInputError) as e:
        load_segments_pickle(p, "s")
    assert "system" in str(e.value) and "s.pkl" in str(e.value) and "slide 's'" in str(e.value)
    assert not marker.exists()


def test_malformed_pickles(tmp_path):
    p = tmp_path / "a.pkl"
    p.write_bytes(pickle.dumps({"not": "a list"}))
    with pytest.raises(SegmentsError, match="not a Segments pickle"):
        load_segments_pickle(p, "a")
    seg = segments_list([rect_mask(8, 8, 0, 0, 4, 4)])
    seg[1]["segmentation"] = np.zeros((4, 4), bool)
    seg.append(segments_list([rect_mask(8, 8, 0, 0, 4, 4)])[1])
    write_segments(p, seg)
    with pytest.raises(SegmentsError, match="different shapes"):
        load_segments_pickle(p, "a")
    del seg[0]["vis_level"]
    write_segments(p, seg)
    with pytest.raises(SegmentsError, match="vis_level"):
        load_segments_pickle(p, "a")
    p.write_bytes(pickle.dumps([1, 2, 3])[:5])  # truncated
    with pytest.raises(InputFormatError, match="not a readable pickle"):
        load_segments_pickle(p, "a")


def test_empty_mask_list_is_allowed(tmp_path):
    p = write_segments(tmp_path / "e.pkl", segments_list([]))
    ms = load_segments_pickle(p, "e")
    assert ms.n_masks == 0


def test_geometry_out_of_range(tmp_path):
    p = write_segments(tmp_path / "g.pkl", segments_list([rect_mask(16, 16, 0, 0, 8, 8)], start=(5000, 5000), ratio=4))
    ms = load_segments_pickle(p, "g")
    coords = np.array([[0, 0], [64, 0]], np.int64)
    with pytest.raises(SegmentsError) as e:
        check_geometry(ms, coords, 64, "g", path=p)
    assert "outside the SAM image" in str(e.value) and "g.pkl" in str(e.value)
    ok = np.array([[5000, 5000], [5032, 5000]], np.int64)
    check_geometry(ms, ok, 64, "g", path=p)
    with pytest.raises(SegmentsError, match="outside the slide"):
        check_geometry(ms, ok, 64, "g", path=p, slide_dims=(4000, 4000))

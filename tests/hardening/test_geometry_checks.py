"""Geometry is checked, and the real culprit named: mask bboxes against their masks (a bad bbox would silently
drop a mask under ``--membership reference``), patch coords against the slide (negative or beyond its extent),
before the Segments pickle is compared with them."""
from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest

from clam2sam.store import schema
from clam2sam.convert.cohort import ConvertOptions, convert_cohort
from clam2sam.sources.coords_check import check_coords
from clam2sam.errors import InputFormatError, SegmentsError
from clam2sam.sources.safe_load import load_pickle
from clam2sam.sources.segments_pickle import load_segments_pickle
from clam2sam.store.writer import open_store

from tests.clam2sam import archive_factory as af

REF_SEGMENTS = af.REFERENCE / "sammil" / "segments"


def _seg_with_bbox(bbox):
    seg = af.segments_list([af.rect_mask(32, 16, 0, 0, 16, 16), af.rect_mask(32, 16, 2, 3, 6, 9)], ratio=4)
    seg[2]["bbox"] = bbox
    return seg


@pytest.mark.parametrize("bbox,what", [([1e6, 1e6, 50, 50], "outside the mask image"),
                                       ([-40, 0, 4, 6], "outside the mask image"),
                                       ([2, 3, 1, 1], "does not contain the mask's pixels"),
                                       ([10, 20, 3, 3], "does not contain the mask's pixels")])
def test_bad_bbox_is_refused_naming_mask(tmp_path, bbox, what):
    p = tmp_path / "s.pkl"
    p.write_bytes(pickle.dumps(_seg_with_bbox(bbox)))
    with pytest.raises(SegmentsError) as e:
        load_segments_pickle(p, "s1", 1.0)
    msg = str(e.value)
    assert "slide 's1'" in msg and str(p) in msg and "mask 1 (pickle element 2)" in msg and what in msg, msg


def test_exact_and_reference_bboxes_pass(tmp_path):
    p = tmp_path / "s.pkl"
    seg = af.segments_list([af.rect_mask(32, 16, 0, 0, 16, 16), af.rect_mask(32, 16, 2, 3, 6, 9)], ratio=4)
    p.write_bytes(pickle.dumps(seg))                      # tight boxes, as SAM writes them
    assert load_segments_pickle(p, "s1", 1.0).bboxes.tolist() == [[0, 0, 15, 15], [2, 3, 3, 5]]
    for name in ("cmu_small_region", "ihc_tiled"):        # real SAM-MIL pickles
        ms = load_segments_pickle(REF_SEGMENTS / f"{name}.pkl", name, 4.0)
        assert ms.n_masks >= 1


def test_reference_membership_never_drops_a_mask_silently(tmp_path):
    """A far-away bbox must not leave mask 1 silently without members under --membership reference (exit 0)."""
    af.make_segmented_cohort(tmp_path / "arch", n_slides=2)
    pkl = tmp_path / "arch" / "segments" / "s1.pkl"
    seg = load_pickle(pkl)  # the allow-list loader, as for any pickle read
    seg[2]["bbox"] = [1e6, 1e6, 50, 50]
    pkl.write_bytes(pickle.dumps(seg))
    rep = convert_cohort(ConvertOptions(archive=tmp_path / "arch", out=tmp_path / "c.zarr",
                                        membership=schema.MEMBERSHIP_REFERENCE, skip_errors=True))
    st = {o.slide_id: o for o in rep.outcomes}
    assert st["s0"].status == "converted" and st["s1"].status == "failed", rep.to_dict()
    reason = st["s1"].reason
    assert "slide 's1'" in reason and "s1.pkl" in reason and "mask 1" in reason and "bbox" in reason, reason
    assert rep.return_code != 0
    assert open_store(tmp_path / "c.zarr").slide_ids() == ["s0"]


def _negate_first_coord(h5):
    with h5py.File(h5, "r+") as f:
        c = f["coords"][...]
        c[3] = (-256, 64)
        f["coords"][...] = c


@pytest.mark.parametrize("with_pickle", [False, True])
def test_negative_coords_name_the_coords_file_not_the_pickle(tmp_path, with_pickle):
    if with_pickle:
        af.make_segmented_cohort(tmp_path / "arch", n_slides=2)
    else:
        af.make_clam(tmp_path / "arch", {"s0": 20, "s1": 20})
    h5 = tmp_path / "arch" / "h5_files" / "s1.h5"
    _negate_first_coord(h5)
    rep = convert_cohort(ConvertOptions(archive=tmp_path / "arch", out=tmp_path / "c.zarr", skip_errors=True))
    st = {o.slide_id: o for o in rep.outcomes}
    assert st["s0"].status == "converted" and st["s1"].status == "failed", rep.to_dict()
    reason = st["s1"].reason
    assert "negative" in reason and "patch 3" in reason and str(h5) in reason, reason
    assert ".pkl" not in reason, reason                    # the pickle is not the culprit


def test_coords_beyond_the_slide_extent():
    coords = af.grid_coords(10)                            # x up to 64, y up to 448
    check_coords(coords, "s", coords_path="p.h5", slide_dims=(4096, 4096))
    with pytest.raises(InputFormatError) as e:
        check_coords(coords, "s", coords_path="p.h5", slide_dims=(4096, 300), slide_path="s.svs")
    msg = str(e.value)
    assert "slide 's'" in msg and "p.h5" in msg and "4096x300" in msg and "s.svs" in msg and "patch 5" in msg, msg
    with pytest.raises(InputFormatError, match="negative"):
        check_coords(np.array([[0, 0], [5, -1]]), "s", coords_path="p.h5")

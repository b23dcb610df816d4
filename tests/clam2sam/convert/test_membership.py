import h5py
import numpy as np
import pytest

from clam2sam.store import schema
from clam2sam.masks import MaskSet, SamGeometry
from clam2sam.convert.membership import assign_membership, build_slide_arrays, empty_membership, group_means
from clam2sam.sources.segments_pickle import load_segments_pickle

from tests.clam2sam.archive_factory import REFERENCE, rect_mask

REF = schema.MEMBERSHIP_REFERENCE
PART = schema.MEMBERSHIP_PARTITION
needs_ref = pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference fixtures not present")


def _ref(sid, lds):
    ms = load_segments_pickle(REFERENCE / f"sammil/segments/{sid}.pkl", sid, lambda lv: lds)
    with h5py.File(REFERENCE / f"clam/h5_files/{sid}.h5", "r") as f:
        X, C = f["features"][()], f["coords"][()].astype(np.int64)
    return ms, X, C


@needs_ref
@pytest.mark.parametrize("sid,lds", [("cmu_small_region", 1.0), ("ihc_tiled", 2.0)])
def test_reference_rule_reproduces_sammil_outputs(sid, lds):
    ms, X, C = _ref(sid, lds)
    m = assign_membership(C, 128, ms, REF)
    with h5py.File(REFERENCE / f"sammil/sam_info/{sid}.h5", "r") as f:
        ra, isg = f["relative_area"][()], f["is_group_feat"][()]
    np.testing.assert_array_equal(m.patch_sam_area, ra[isg == 0])
    with h5py.File(REFERENCE / f"sammil/seg_files/{sid}.h5", "r") as f:
        segs = sorted((int(f[k].attrs["seg_index"]), f[k][()]) for k in f)
    assert [s for s, _ in segs] == m.segment_source_index.tolist()
    for k, (_, member_coords) in enumerate(segs):
        rows = m.member_indices[m.member_indptr[k]:m.member_indptr[k + 1]]
        np.testing.assert_array_equal(C[rows], member_coords)
    sa = build_slide_arrays(sid, X, C, m, total_downsample=ms.geometry.total_downsample)
    with h5py.File(REFERENCE / f"sammil/h5_files/{sid}.h5", "r") as f:
        F, HC = f["features"][()], f["coords"][()]
    groups = F[(HC == -1).all(1)]
    assert groups.shape == sa.group_features.shape
    np.testing.assert_allclose(sa.group_features, groups, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(sa.segment_areas, ms.areas[m.segment_source_index] * float(ms.geometry.total_downsample) ** 2)


@needs_ref
def test_reference_readme_tables_cmu():
    ms, X, C = _ref("cmu_small_region", 1.0)
    assert ms.n_masks == 13 and ms.masks.shape[1:] == (724, 483) and ms.geometry.total_downsample == 4
    m = assign_membership(C, 128, ms, REF)
    members = np.zeros(13, int)
    members[m.segment_source_index] = np.diff(m.member_indptr)
    assert members.tolist() == [6, 2, 3, 8, 12, 69, 33, 86, 0, 0, 5, 23, 20]
    per_patch = np.bincount(m.member_indices, minlength=len(C))
    assert int((per_patch > 1).sum()) == 93 and int((per_patch == 0).sum()) == 36
    vals, counts = np.unique(m.patch_sam_area, return_counts=True)
    assert dict(zip(vals.tolist(), counts.tolist())) == {
        1: 36, 4960: 3, 14117: 6, 16285: 3, 17400: 1, 20078: 23, 38554: 3, 40472: 20, 46743: 9, 59695: 21,
        69811: 55, 197912: 2}
    ones = [46] + list(range(52, 57)) + list(range(73, 83)) + list(range(96, 107)) + list(range(117, 125)) + [142]
    assert np.flatnonzero(m.patch_sam_area == 1).tolist() == ones
    assert m.patch_sam_area[:10].tolist() == [46743] * 4 + [38554] * 3 + [14117, 16285, 16285]
    # segment_ids point at the smallest containing mask
    assigned = m.segment_ids >= 0
    np.testing.assert_array_equal(m.segment_sam_area[m.segment_ids[assigned]], m.patch_sam_area[assigned])


def _geom(W=32, H=32, D=4, sx=0, sy=0):
    return SamGeometry(start_x=sx, start_y=sy, total_downsample=D, width=W, height=H)


def _ms(masks, geom):
    masks = np.stack(masks)
    areas = masks.reshape(len(masks), -1).sum(1)
    bb = []
    for mk in masks:
        ys, xs = np.nonzero(mk)
        bb.append([xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()] if len(xs) else [0, 0, 0, 0])
    return MaskSet(masks=masks, areas=areas, bboxes=np.array(bb), geometry=geom)


def test_partition_smallest_mask_covering_centre():
    big = rect_mask(32, 32, 0, 0, 32, 16)        # top half
    small = rect_mask(32, 32, 0, 0, 8, 8)        # top-left corner, nested in big
    empty_far = rect_mask(32, 32, 30, 30, 32, 32)  # covers no patch centre
    # patches of 32 level-0 px = 8 SAM px (D=4)
    coords = np.array([[0, 0], [32, 0], [0, 64], [96, 96]], np.int64)
    m = assign_membership(coords, 32, _ms([big, empty_far, small], _geom()), PART)
    # centre of patch 3 = level-0 (112,112) -> SAM (28,28): inside empty_far? 30..32 no -> none
    assert m.segment_source_index.tolist() == [0, 2]       # empty mask 1 dropped, ids contiguous
    assert m.segment_ids.tolist() == [1, 0, -1, -1]         # patch 0 in small (smaller), 1 in big
    assert m.patch_sam_area.tolist() == [64, 512, 1, 1]
    assert m.member_indptr.tolist() == [0, 1, 2] and m.member_indices.tolist() == [1, 0]


def test_reference_rule_asymmetry_and_multi_membership():
    mask = rect_mask(32, 32, 8, 8, 16, 16)  # SAM px 8..15
    outer = rect_mask(32, 32, 0, 0, 24, 24)
    # aps = 32 // 4 = 8 SAM px. Patch A top-left SAM (4,4): outside bbox of `mask` though overlapping -> excluded.
    # Patch B top-left (12,12): in bbox, overlaps -> member. Patch C (8,8) exactly at bbox start -> member.
    coords = np.array([[16, 16], [48, 48], [32, 32]], np.int64)
    m = assign_membership(coords, 32, _ms([mask, outer], _geom()), REF)
    rows = {int(s): m.member_indices[m.member_indptr[k]:m.member_indptr[k + 1]].tolist()
            for k, s in enumerate(m.segment_source_index)}
    assert rows == {0: [1, 2], 1: [0, 1, 2]}
    assert m.segment_ids.tolist() == [1, 0, 0]  # smallest containing mask
    assert m.patch_sam_area.tolist() == [576, 64, 64]


def test_reference_rule_rounds_half_to_even():
    mask = rect_mask(16, 16, 0, 0, 16, 16)
    mask[0, 0] = True
    # (x - 0)/4 = 2.5 -> numpy rounds to 2 (SAM-MIL's .round()); 3.5 -> 4
    coords = np.array([[10, 0], [14, 0]], np.int64)
    ms = _ms([mask], _geom(16, 16))
    ms.bboxes[:] = [[3, 0, 10, 10]]  # bbox starting at x=3: only the patch that rounds to 4 qualifies
    m = assign_membership(coords, 16, ms, REF)
    assert m.member_indices.tolist() == [1]


def test_no_masks_and_tiny_patches():
    coords = np.zeros((5, 2), np.int64)
    m = assign_membership(coords, 64, None)
    assert m.n_segments == 0 and (m.segment_ids == -1).all() and (m.patch_sam_area == 1).all()
    ms = _ms([rect_mask(8, 8, 0, 0, 8, 8)], _geom(8, 8, D=128))
    assert assign_membership(coords, 64, ms, REF).n_segments == 0  # aps = 64 // 128 == 0, as in SAM-MIL
    e = empty_membership(3)
    assert e.member_indptr.tolist() == [0]


def test_group_means_float64_accumulation_and_dtypes():
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(50, 4)) * 1000).astype(np.float16)
    indptr = np.array([0, 3, 10]); indices = np.array([0, 5, 7, 10, 11, 12, 13, 14, 15, 16], np.int32)
    g = group_means(X, indptr, indices)
    assert g.dtype == np.float32
    np.testing.assert_allclose(g[0], X[[0, 5, 7]].astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(g[1], X[10:17].astype(np.float64).mean(0), rtol=1e-6)
    assert group_means(X.astype(np.float64), indptr, indices).dtype == np.float64


def test_build_slide_arrays_areas_in_level0_and_um2():
    mask = rect_mask(32, 32, 0, 0, 32, 32)
    coords = np.array([[0, 0], [32, 0]], np.int64)
    X = np.ones((2, 3), np.float32)
    m = assign_membership(coords, 32, _ms([mask], _geom()), PART)
    s = build_slide_arrays("s", X, coords, m, total_downsample=4, mpp=0.5)
    assert s.segment_areas.tolist() == [1024 * 16.0] and s.segment_areas_um2.tolist() == [1024 * 16 * 0.25]
    assert s.segment_sizes.tolist() == [2] and s.attrs["membership"] == PART
    s.validate()
    s2 = build_slide_arrays("s", X, coords, m, total_downsample=4)
    assert np.isnan(s2.segment_areas_um2).all()


def test_vectorised_on_a_large_slide_matches_bruteforce():
    rng = np.random.default_rng(1)
    H = W = 256
    masks = []
    for _ in range(20):
        x0, y0 = rng.integers(0, 200, 2)
        masks.append(rect_mask(H, W, x0, y0, x0 + rng.integers(5, 80), y0 + rng.integers(5, 80)))
    ms = _ms(masks, _geom(W, H, D=4))
    coords = np.stack(np.meshgrid(np.arange(0, 1024, 32), np.arange(0, 1024, 32)), -1).reshape(-1, 2).astype(np.int64)
    m = assign_membership(coords, 64, ms, REF)
    # brute force, SAM-MIL's loop
    for k, src in enumerate(m.segment_source_index):
        bx, by, bw, bh = ms.bboxes[src]
        exp = []
        for i, (x, y) in enumerate(coords):
            ax, ay = int(np.round(x / 4)), int(np.round(y / 4))
            if bx <= ax < bx + bw and by <= ay < by + bh and ms.masks[src, ay:ay + 16, ax:ax + 16].any():
                exp.append(i)
        assert m.member_indices[m.member_indptr[k]:m.member_indptr[k + 1]].tolist() == exp
    p = assign_membership(coords, 64, ms, PART)
    for i in range(0, len(coords), 37):
        cx, cy = (coords[i] + 32) // 4
        hits = [j for j in range(20) if cx < W and cy < H and ms.masks[j, cy, cx]]
        if not hits:
            assert p.segment_ids[i] == -1
        else:
            best = min(hits, key=lambda j: (ms.areas[j], j))
            assert p.segment_source_index[p.segment_ids[i]] == best


def test_partition_drops_mask_whose_patches_all_go_to_smaller_masks():
    """A big mask fully shadowed by smaller masks has no member: it must not become an empty segment."""
    from clam2sam.masks import MaskSet, SamGeometry
    from clam2sam.convert.membership import assign_membership

    H = W = 8
    big = np.zeros((H, W), bool); big[0:4, 0:8] = True          # covers both patch centres
    left = np.zeros((H, W), bool); left[0:4, 0:4] = True        # smaller, covers patch 0 centre
    right = np.zeros((H, W), bool); right[0:4, 4:8] = True      # smaller, covers patch 1 centre
    masks = np.stack([big, left, right])
    ms = MaskSet(masks=masks, areas=masks.sum((1, 2)), bboxes=np.array([[0, 0, 7, 3], [0, 0, 3, 3], [4, 0, 3, 3]]),
                 geometry=SamGeometry(start_x=0, start_y=0, total_downsample=1, width=W, height=H))
    coords = np.array([[0, 0], [4, 0]], np.int64)
    m = assign_membership(coords, 4, ms)
    assert m.segment_source_index.tolist() == [1, 2]
    assert m.segment_ids.tolist() == [0, 1]
    assert np.diff(m.member_indptr).tolist() == [1, 1]


def test_group_means_of_scattered_members_are_gathered_in_blocks(monkeypatch):
    import clam2sam.convert.membership as m

    monkeypatch.setattr(m, "GROUP_BLOCK", 7)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 5)).astype(np.float32)
    members = [np.sort(rng.choice(200, size=n, replace=False)) for n in (1, 7, 50, 123)]  # scattered
    members.append(np.arange(20, 60))                                                     # contiguous
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in members])])
    g = m.group_means(X, indptr, np.concatenate(members).astype(np.int32))
    for k, r in enumerate(members):
        np.testing.assert_allclose(g[k], X[r].astype(np.float64).mean(0), rtol=0, atol=1e-6)


def test_nonfinite_rows_exact_without_false_positives():
    from clam2sam.sources.readers import nonfinite_rows

    X = np.ones((6, 4), np.float32)
    X[1, 2] = np.nan
    X[3, 0] = np.inf
    X[4] = 3e38                       # finite, but its float32 row sum overflows: must not be flagged
    X[5, 1], X[5, 2] = np.inf, -np.inf
    assert nonfinite_rows(X).tolist() == [1, 3, 5]
    assert nonfinite_rows(np.zeros((3, 2), np.float16)).size == 0

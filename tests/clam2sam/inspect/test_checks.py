"""``inspect --check``: passes on fresh stores, names slide and array on stores corrupted here."""
import hashlib
import json

import numpy as np
import pytest
import zarr

from clam2sam.inspect.checks import Problem, check_store
from clam2sam.cli.main import main
from clam2sam.store.writer import SlideArrays
from tests.clam2sam.inspect.test_stats import PS, grid_slide, make_store


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "c.zarr", [grid_slide("a", 120, seed=1), grid_slide("b", 200, seed=2)])


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def only(res, slide, array):
    """The problems of ``res`` must all be about ``slide``; one of them names ``array``."""
    assert not res.ok
    assert {p.slide for p in res.problems} == {slide}, res.problems
    assert array in {p.array for p in res.problems}, res.problems


def test_fresh_store_passes(store, capsys):
    res = check_store(store)
    assert res.ok and res.slides_checked == 2 and res.problems == []
    code, out, _ = run(["inspect", str(store), "--check"], capsys)
    assert code == 0 and "check passed" in out


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_feature_dtypes_pass(tmp_path, dtype):
    s = grid_slide("h", 300, dtype=dtype, seed=7)
    s.features = (s.features * 30).astype(dtype)  # larger magnitudes: tolerance scales with them
    s = SlideArrays.from_partition("h", s.features, s.coords, s.segment_ids, attrs=s.attrs, mpp=0.5)
    assert check_store(make_store(tmp_path / "h.zarr", [s])).ok


def test_changed_group_feature(store, capsys):
    g = zarr.open_group(str(store / "slides" / "b"), mode="r+")
    gf = g["group_features"][...]
    gf[2, 3] += 1e-3
    g["group_features"][...] = gf
    res = check_store(store)
    only(res, "b", "group_features")
    assert "segment 2" in res.problems[0].message
    code, out, _ = run(["inspect", str(store), "--check"], capsys)
    assert code == 1 and "group_features" in out and " b " in out
    code, out, _ = run(["inspect", str(store), "--check", "--json"], capsys)
    got = json.loads(out)
    assert code == 1 and got["check"]["ok"] is False
    assert got["check"]["problems"][0]["slide"] == "b" and got["check"]["problems"][0]["array"] == "group_features"


def test_array_replaced_by_shorter_one(store):
    g = zarr.open_group(str(store / "slides" / "a"), mode="r+")
    short = g["coords"][:-5]
    del g["coords"]
    g.create_array("coords", data=short)
    res = check_store(store)
    only(res, "a", "coords")
    assert "(115, 2) != (120, 2)" in res.problems[0].message


def test_truncated_features_rows_and_attr(store):
    g = zarr.open_group(str(store / "slides" / "a"), mode="r+")
    g["features"].resize((100, 8))
    res = check_store(store)
    only(res, "a", "features")
    assert any("n_patches = 120" in p.message for p in res.problems)


def test_truncated_shard_file(store):
    shard = store / "slides" / "b" / "features" / "c" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    res = check_store(store)
    only(res, "b", "features")
    assert "unreadable" in res.problems[0].message


def test_slide_without_completion_mark(tmp_path, capsys):
    path = make_store(tmp_path / "c.zarr", [grid_slide("a", 50), grid_slide("b", 60)], incomplete=["b"])
    res = check_store(path)
    assert res.problems == [res.problems[0]] and res.problems[0].slide == "b"
    assert "incomplete" in res.problems[0].message
    code, out, _ = run(["inspect", str(path), "--check"], capsys)
    assert code == 1 and "incomplete" in out


def test_nan_feature_sizes_segment_ids_patch_area(store):
    g = zarr.open_group(str(store / "slides" / "a"), mode="r+")
    f = g["features"][...]
    f[7, 0] = np.nan
    g["features"][...] = f
    sizes = g["segment_sizes"][...]
    sizes[1] += 1
    g["segment_sizes"][...] = sizes
    sid = g["segment_ids"][...]
    i = int(np.flatnonzero(sid == 0)[0])
    sid[i] = 1
    g["segment_ids"][...] = sid
    res = check_store(store)
    arrays = {p.array for p in res.problems}
    assert {"features", "segment_sizes", "segment_ids"} <= arrays and {p.slide for p in res.problems} == {"a"}
    assert any("NaN/inf" in p.message and "row 7" in p.message for p in res.problems)
    assert any(f"patch {i}" in p.message for p in res.problems if p.array == "segment_ids")


def test_um2_and_partition_overlap(store):
    g = zarr.open_group(str(store / "slides" / "b"), mode="r+")
    g["segment_areas_um2"][...] = g["segment_areas_um2"][...] * 2
    res = check_store(store)
    only(res, "b", "segment_areas_um2")


def test_sources_verified_when_reachable(tmp_path):
    src = tmp_path / "a.h5"
    src.write_bytes(b"features" * 100)
    s = grid_slide("a", 40)
    s.attrs["sources"] = [
        {"role": "features", "path": str(src), "size": 800,
         "sha256": hashlib.sha256(src.read_bytes()).hexdigest()},
        {"role": "segments", "path": str(tmp_path / "gone.pkl"), "size": 3, "sha256": "00"}]
    path = make_store(tmp_path / "c.zarr", [s])
    res = check_store(path)
    assert res.ok and len(res.notes) == 1 and "gone.pkl" in res.notes[0] and "not reachable" in res.notes[0]
    src.write_bytes(b"featureX" * 100)  # same size, other content
    res = check_store(path)
    only(res, "a", "sources")
    assert "sha256" in res.problems[0].message
    assert check_store(path, verify_sources=False).ok


def test_schema_version_and_not_a_store(tmp_path, capsys):
    path = make_store(tmp_path / "c.zarr", [grid_slide("a", 20)])
    zj = path / "zarr.json"
    meta = json.loads(zj.read_text())
    meta["attributes"]["schema_version"] = 99
    zj.write_text(json.dumps(meta))
    res = check_store(path)
    assert res.problems[0].slide is None and "schema_version 99" in res.problems[0].message
    code, out, err = run(["inspect", str(path), "--check"], capsys)
    assert code == 1 and "schema_version 99" in out
    code, out, err = run(["inspect", str(path)], capsys)  # without --check: an error, exit 1
    assert code == 1 and "schema_version 99" in err and out == ""


def test_problem_str():
    assert str(Problem("s", "coords", "bad")) == "slide 's' / array 'coords': bad"
    assert str(Problem(None, None, "bad")) == "bad"


def test_reference_rule_multi_membership_passes_and_detects(tmp_path):
    base = grid_slide("m", 10, n_seg=0)
    f = base.features
    indptr, indices = np.array([0, 4, 7]), np.array([0, 1, 2, 3, 3, 4, 5], np.int32)
    gf = np.stack([f[[0, 1, 2, 3]].astype(np.float64).mean(0), f[[3, 4, 5]].astype(np.float64).mean(0)])
    seg = np.array([0, 0, 0, 1, 1, 1, -1, -1, -1, -1], np.int32)
    kw = dict(slide_id="m", features=f, coords=base.coords, patch_sam_area=np.where(seg >= 0, 5, 1),
              segment_sizes=np.array([4, 3]), segment_areas=np.array([4.0, 3.0]) * PS * PS,
              segment_areas_um2=np.full(2, np.nan), segment_sam_area=np.array([5, 5]),
              segment_source_index=np.array([0, 2], np.int32), member_indptr=indptr, member_indices=indices,
              attrs={"membership": "reference", "patch_size_level0": PS})
    ok = SlideArrays(segment_ids=seg, group_features=gf.astype(np.float32), **kw)
    assert check_store(make_store(tmp_path / "ok.zarr", [ok])).ok
    bad_seg = seg.copy()
    bad_seg[6] = 0  # patch 6 is in no segment
    bad = SlideArrays(segment_ids=bad_seg, group_features=gf.astype(np.float32), **kw)
    only(check_store(make_store(tmp_path / "bad.zarr", [bad])), "m", "segment_ids")

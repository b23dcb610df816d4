"""Numbers of ``clam2sam inspect --json`` against values computed here from the store's arrays."""
import json
import os

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from clam2sam.cli.main import cli
from clam2sam.inspect.stats import QUANTILE_KEYS, cohort_stats, describe, slide_stats
from clam2sam.store.writer import SlideArrays, StoreWriter, open_store

PS = 256


def grid_slide(sid, n, *, d=8, n_seg=4, seed=0, label="1", mpp=0.5, dtype=np.float32, unassigned=0.2):
    """A slide on a 20-wide patch grid with random segments (some patches unassigned)."""
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(n, d)).astype(dtype)
    c = np.stack([np.arange(n) % 20 * PS, np.arange(n) // 20 * PS], 1)
    seg = rng.integers(0, n_seg, size=n) if n_seg else np.full(n, -1)
    seg[rng.random(n) < unassigned] = -1
    attrs = {"label": label, "patch_size_level0": PS, "layout": "synthetic",
             "sam": {"model_type": "vit_b", "geometry": {"total_downsample": 4}}}
    return SlideArrays.from_partition(sid, f, c, seg, attrs=attrs, mpp=mpp)


def make_store(path, slides, *, incomplete=()):
    """Write ``slides`` (SlideArrays) to ``path``; slides named in ``incomplete`` lose their completion mark."""
    with StoreWriter(path, encoder="test") as w:
        for s in slides:
            w.write_slide(s)
        w.finalize()
    for sid in incomplete:
        zj = path / "slides" / sid / "zarr.json"
        meta = json.loads(zj.read_text())
        meta["attributes"].pop("complete")
        zj.write_text(json.dumps(meta))
    return path


def cohort(tmp_path):
    slides = [grid_slide("a", 120, seed=1, label="0"), grid_slide("b", 300, seed=2, n_seg=7),
              grid_slide("c", 50, seed=3, label=None, mpp=None), grid_slide("nos", 40, seed=4, n_seg=0),
              grid_slide("half", 30, seed=5)]
    return make_store(tmp_path / "c.zarr", slides, incomplete=["half"]), slides[:4]


def _q(v):
    v = np.asarray(v, float)
    return {"min": v.min(), "median": np.median(v), "max": v.max(), "mean": v.mean(),
            "p10": np.quantile(v, 0.1), "p25": np.quantile(v, 0.25), "p75": np.quantile(v, 0.75),
            "p90": np.quantile(v, 0.9), "n": len(v)}


def _assert_q(got, v):
    for k, x in _q(v).items():
        assert got[k] == pytest.approx(x, rel=1e-9), k


def test_cohort_json_equals_independent_numbers(tmp_path):
    path, slides = cohort(tmp_path)
    res = CliRunner().invoke(cli, ["inspect", str(path), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)  # stdout holds only the JSON
    # independent computation from the arrays, read back with zarr directly
    seg_ids, sizes, areas, um2, norms, n = [], [], [], [], [], []
    for s in slides:
        g = zarr.open_group(str(path / "slides" / s.slide_id), mode="r")
        f, sid = g["features"][...], g["segment_ids"][...]
        n.append(len(f))
        seg_ids.append(sid)
        S = sid.max() + 1 if (sid >= 0).any() else 0
        sz = np.bincount(sid[sid >= 0], minlength=S)
        sizes.append(sz)
        areas.append(sz * PS * PS)
        mpp = s.attrs.get("mpp")
        um2.append(sz * PS * PS * mpp ** 2 if mpp else np.full(S, np.nan))
        norms += [np.linalg.norm(f[sid == k].astype(np.float64).mean(0)) for k in range(S)]
    assert got["slides"] == {"complete": 4, "incomplete": 1, "incomplete_ids": ["half"], "unreadable": 0}
    assert got["features"]["dim"] == 8 and got["features"]["dtype"] == "float32"
    assert got["patches"]["total"] == sum(n) == 510
    _assert_q(got["patches"]["per_slide"], n)
    assert got["labels"] == {"counts": {"0": 1, "1": 2}, "unlabelled": 1}
    assert got["segments"]["total"] == sum(len(x) for x in sizes) == 4 + 7 + 4
    _assert_q(got["segments"]["per_slide"], [len(x) for x in sizes])
    assert got["segments"]["slides_without_segments"] == 1
    _assert_q(got["segments"]["size_patches"], np.concatenate(sizes))
    _assert_q(got["segments"]["area_level0_px"], np.concatenate(areas))
    allum2 = np.concatenate(um2)
    _assert_q(got["segments"]["area_um2"], allum2[np.isfinite(allum2)])
    assert got["segments"]["area_um2"]["n"] == 11  # slide c has no mpp
    covered = sum(int((s >= 0).sum()) for s in seg_ids)
    assert got["coverage"]["covered"] == covered
    assert got["coverage"]["share"] == pytest.approx(covered / 510)
    assert got["coverage"]["unassigned"] == 510 - covered and got["coverage"]["multi_member"] == 0
    _assert_q(got["coverage"]["per_slide"], [np.mean(s >= 0) for s in seg_ids])
    for k, x in _q(norms).items():
        assert got["group_feature_norm"][k] == pytest.approx(x, rel=1e-5), k
    assert got["membership"] == {"smallest-centre": 4} and got["layouts"] == {"synthetic": 4}
    assert got["sam"]["slides_with_sam"] == 4
    assert got["sam"]["provenance"]["model_type"] == {"distinct": 1, "top": {"vit_b": 4}}
    assert got["sam"]["provenance"]["geometry.total_downsample"]["top"] == {"4": 4}
    assert [r["slide_id"] for r in got["slide_table"]] == ["a", "b", "c", "nos"]
    assert got["slide_table"][1]["n_segments"] == 7 and got["slide_table"][3]["coverage"] == 0.0
    # disk: apparent file sizes, uncompressed = every array's nbytes (incomplete slide included)
    disk = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
    unc = 0
    for sid in ("a", "b", "c", "nos", "half"):
        g = zarr.open_group(str(path / "slides" / sid), mode="r")
        unc += sum(a.nbytes for _, a in g.arrays())
    st = got["store"]
    assert st["disk_bytes"] == disk and st["uncompressed_bytes"] == unc
    assert st["compression_ratio"] == pytest.approx(unc / disk)
    assert st["encoder"] == "test" and st["schema_version"] == 1


def test_slide_json_and_largest_segments(tmp_path):
    path, slides = cohort(tmp_path)
    res = CliRunner().invoke(cli, ["inspect", str(path), "--slide", "b", "--json", "--top", "3"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    s = slides[1]
    sz = np.bincount(s.segment_ids[s.segment_ids >= 0])
    assert got["kind"] == "slide" and got["slide_id"] == "b"
    assert got["patches"]["total"] == 300 and got["segments"]["total"] == 7 == len(sz)
    assert got["patches"]["extent_level0"] == {"x_min": 0, "y_min": 0, "x_max": 20 * PS, "y_max": 15 * PS}
    order = sorted(range(7), key=lambda k: (-sz[k], k))[:3]
    assert [x["segment"] for x in got["largest_segments"]] == order
    top = got["largest_segments"][0]
    k = order[0]
    assert top["n_patches"] == sz[k] and top["area_level0_px"] == sz[k] * PS * PS
    assert top["area_um2"] == pytest.approx(sz[k] * PS * PS * 0.25)
    gf = s.features[s.segment_ids == k].astype(np.float64).mean(0)
    assert top["group_feature_norm"] == pytest.approx(np.linalg.norm(gf), rel=1e-5)
    assert got["coverage"]["covered"] == int((s.segment_ids >= 0).sum())
    assert got["mpp"] == 0.5 and got["patch_size_level0"] == PS and got["label"] == "1"
    assert got["sam"]["model_type"] == "vit_b"
    assert got["disk"]["disk_bytes"] == sum(
        os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path / "slides" / "b") for f in fs)


def test_multi_membership_coverage(tmp_path):
    """Reference rule: a patch in two segments counts once for coverage and once in multi_member."""
    base = grid_slide("m", 10, n_seg=0)
    f = base.features
    indptr, indices = np.array([0, 4, 7]), np.array([0, 1, 2, 3, 3, 4, 5], np.int32)
    gf = np.stack([f[[0, 1, 2, 3]].mean(0), f[[3, 4, 5]].mean(0)]).astype(np.float32)
    seg = np.array([0, 0, 0, 1, 1, 1, -1, -1, -1, -1], np.int32)
    s = SlideArrays(slide_id="m", features=f, coords=base.coords, segment_ids=seg,
                    patch_sam_area=np.where(seg >= 0, 5, 1), group_features=gf, segment_sizes=np.array([4, 3]),
                    segment_areas=np.array([4.0, 3.0]) * PS * PS, segment_areas_um2=np.full(2, np.nan),
                    segment_sam_area=np.array([5, 5]), segment_source_index=np.array([0, 2], np.int32),
                    member_indptr=indptr, member_indices=indices,
                    attrs={"membership": "reference", "patch_size_level0": PS})
    make_store(tmp_path / "m.zarr", [s])
    got = slide_stats(open_store(tmp_path / "m.zarr"), "m")
    assert got["coverage"] == {"share": 0.6, "covered": 6, "unassigned": 4, "multi_member": 1}
    assert got["membership"] == "reference"
    assert [x["source_index"] for x in got["largest_segments"]] == [0, 2]


def test_describe_empty_and_values():
    assert describe([]) == {k: (0 if k == "n" else None) for k in QUANTILE_KEYS}
    d = describe([1, 2, 3, np.nan, 4])
    assert d["n"] == 4 and d["median"] == 2.5 and d["min"] == 1 and d["max"] == 4 and d["mean"] == 2.5


def test_unreadable_slide_is_listed_not_fatal(tmp_path):
    path, _ = cohort(tmp_path)
    shard = path / "slides" / "a" / "segment_sizes" / "c" / "0"
    shard.write_bytes(shard.read_bytes()[:10])
    got = cohort_stats(open_store(path))
    assert got["slides"]["unreadable"] == 1 and got["errors"][0]["slide"] == "a"
    assert "segment_sizes" in got["errors"][0]["message"]
    assert got["patches"]["total"] == 300 + 50 + 40

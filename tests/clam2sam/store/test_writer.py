import numpy as np
import pytest

from clam2sam.store import schema
from clam2sam.errors import StoreError, StoreLockedError
from clam2sam.ids import normalise_slide_id, slide_key
from clam2sam.store.writer import SlideArrays, StoreWriter, open_store


def _slide(sid, n=300, d=16, seed=0):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(n, d)).astype(np.float32)
    c = np.stack([np.arange(n) * 256, np.zeros(n)], 1).astype(np.int64)
    seg = rng.integers(-1, 5, size=n)
    return SlideArrays.from_partition(sid, f, c, seg, attrs={"label": "1", "patch_size_level0": 256}, mpp=0.5)


def test_roundtrip_values_and_group_means(tmp_path):
    s = _slide("001")
    with StoreWriter(tmp_path / "c.zarr") as w:
        w.write_slide(s)
        w.finalize()
    r = open_store(tmp_path / "c.zarr")
    assert r.slide_ids() == ["001"]
    got = r.read_slide("001")
    np.testing.assert_array_equal(got.features, s.features)
    np.testing.assert_array_equal(got.coords, s.coords)
    for k in range(got.n_segments):
        rows = np.flatnonzero(got.segment_ids == k)
        np.testing.assert_allclose(got.group_features[k], s.features[rows].astype(np.float64).mean(0), atol=1e-6)
        assert got.segment_sizes[k] == len(rows)
        assert got.segment_areas[k] == len(rows) * 256 ** 2
    assert got.attrs["label"] == "1" and got.attrs["complete"] is True
    assert r.attrs["feature_dim"] == 16 and r.attrs["feature_dtype"] == "float32"


def test_incomplete_slide_is_not_listed_and_is_rewritten(tmp_path):
    with StoreWriter(tmp_path / "c.zarr") as w:
        w.write_slide(_slide("a"))
    # simulate a crash: remove the completion mark
    import json
    zj = tmp_path / "c.zarr" / "slides" / "a" / "zarr.json"
    meta = json.loads(zj.read_text()); meta["attributes"].pop("complete"); zj.write_text(json.dumps(meta))
    r = open_store(tmp_path / "c.zarr")
    assert r.slide_ids() == [] and r.incomplete_slide_ids() == ["a"]
    with pytest.raises(StoreError, match="incomplete"):
        r.read_slide("a")
    with StoreWriter(tmp_path / "c.zarr") as w:
        assert not w.is_complete("a")
        w.write_slide(_slide("a"))
        assert w.is_complete("a")


def test_second_writer_refused_and_dead_holder_taken_over(tmp_path):
    w = StoreWriter(tmp_path / "c.zarr")
    with pytest.raises(StoreLockedError, match="another process"):
        StoreWriter(tmp_path / "c.zarr")
    w.close()
    # a record left by a dead process (no OS lock held any more): taken over without a flag
    (tmp_path / "c.zarr" / ".clam2sam.lock").write_text(
        '{"pid": 999999999, "hostname": "%s", "created": "x"}' % __import__("socket").gethostname())
    StoreWriter(tmp_path / "c.zarr").close()
    assert not (tmp_path / "c.zarr" / ".clam2sam.lock").exists()


def test_mixed_dim_refused(tmp_path):
    with StoreWriter(tmp_path / "c.zarr") as w:
        w.write_slide(_slide("a", d=16))
        with pytest.raises(StoreError, match="feature dim 8"):
            w.write_slide(_slide("b", d=8))


@pytest.mark.parametrize("name,expected", [
    ("a.ome.tif", "a"), ("TCGA-01.svs", "TCGA-01"), ("x_patches.h5", "x_patches"), ("001.h5", "001"),
    ("dir/s.tiff", "s"), ("s.svs.h5", "s")])
def test_normalise_slide_id(name, expected):
    assert normalise_slide_id(name) == expected


def test_slide_key_cannot_escape():
    for bad in ["../../x", "..", "a/b", ".hidden"]:
        k = slide_key(bad)
        assert "/" not in k and not k.startswith(".")


@pytest.mark.parametrize("codec,clevel,expect", [(None, None, ("lz4", 9)), ("zstd", None, ("zstd", 3)),
                                                  ("lz4", 2, ("lz4", 2)), ("none", None, None)])
def test_codec_defaults_are_recorded_and_readable_by_zarr(tmp_path, codec, clevel, expect):
    import json

    import zarr

    kw = {} if codec is None else {"codec": codec}
    s = _slide("a", n=2000)
    with StoreWriter(tmp_path / "c.zarr", clevel=clevel, **kw) as w:
        w.write_slide(s)
        w.finalize()
    meta = json.loads((tmp_path / "c.zarr/slides/a/features/zarr.json").read_text())
    inner = meta["codecs"][0]["configuration"]["codecs"]
    blosc = [c["configuration"] for c in inner if c["name"] == "blosc"]
    assert ((blosc[0]["cname"], blosc[0]["clevel"]) if blosc else None) == expect
    r = open_store(tmp_path / "c.zarr")
    assert (r.attrs["codec"], r.attrs["clevel"]) == ((expect or ("none", 0))[0], (expect or ("none", 0))[1])
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "c.zarr"), mode="r")["slides/a/features"][...],
                                  s.features)


def test_unknown_codec_refused(tmp_path):
    from clam2sam.errors import UsageError

    with pytest.raises(UsageError, match="unknown codec 'brotli'"):
        StoreWriter(tmp_path / "c.zarr", codec="brotli")

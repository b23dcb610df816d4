"""The single-read fast path returns exactly what zarr returns, and refuses corrupt shards."""
import numpy as np
import pytest
import zarr

from clam2sam.fast_read import read_whole_array
from clam2sam.store import SlideArrays, StoreWriter, open_store, _compressor


@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
@pytest.mark.parametrize("n,dtype", [(1, "float32"), (1000, "float16"), (3000, "float64"), (4097, "int64")])
def test_fast_read_equals_zarr(tmp_path, codec, n, dtype):
    rng = np.random.default_rng(n)
    x = (rng.normal(size=(n, 40)) * 100).astype(dtype)
    x[: min(n, 600)] = 0  # chunks equal to the fill value are not written by zarr: must read back as 0
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    rows = 512
    a = g.create_array("a", shape=x.shape, dtype=x.dtype, chunks=(rows, 40),
                       shards=(-(-n // rows) * rows, 40), compressors=_compressor(codec, 3), fill_value=0)
    a[...] = x
    got = read_whole_array(tmp_path / "s.zarr" / "a")
    assert got is not None and got.dtype == x.dtype
    np.testing.assert_array_equal(got, zarr.open_array(str(tmp_path / "s.zarr" / "a"))[...])
    np.testing.assert_array_equal(got, x)


def test_unknown_layout_falls_back(tmp_path):
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    a = g.create_array("a", shape=(10, 3), dtype="float32", chunks=(4, 3))  # not sharded
    a[...] = 1
    assert read_whole_array(tmp_path / "s.zarr" / "a") is None


def test_store_reader_uses_fast_path_and_names_corrupt_shard(tmp_path):
    from clam2sam.errors import StoreError

    f = np.random.default_rng(0).normal(size=(700, 8)).astype(np.float32)
    with StoreWriter(tmp_path / "c.zarr") as w:
        w.write_slide(SlideArrays.from_partition("s1", f, np.zeros((700, 2)), np.arange(700) % 3))
    r = open_store(tmp_path / "c.zarr")
    np.testing.assert_array_equal(r.read_array("s1", "features"), f)
    shard = tmp_path / "c.zarr" / "slides" / "s1" / "features" / "c" / "0" / "0"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="features"):
        r.read_array("s1", "features")

"""The direct shard writer: byte-level Zarr v3 compatibility and round trips through zarr's own reader."""
from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from clam2sam.store import fast_write
from clam2sam.store.fast_write import array_metadata, write_array
from clam2sam.store.writer import zarr_compressors


def _zarr_meta(tmp_path, shape, dtype, rows, shard_rows, codec, clevel, checksum=True):
    zarr.create_array(str(tmp_path / "ref"), shape=shape, dtype=dtype, chunks=(rows,) + shape[1:],
                      shards=(shard_rows,) + shape[1:], compressors=zarr_compressors(codec, clevel, checksum=checksum),
                      fill_value=0, overwrite=True)
    return json.loads((tmp_path / "ref" / "zarr.json").read_text())


@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
def test_metadata_has_the_per_chunk_crc32c_last(tmp_path, codec):
    """bytes -> [blosc] -> crc32c, as zarr writes it; checksum=False is the layout of older stores."""
    ours = array_metadata((300, 7), "float32", 64, 320, codec, 3)
    inner = [c["name"] for c in ours["codecs"][0]["configuration"]["codecs"]]
    assert inner == (["bytes", "crc32c"] if codec == "none" else ["bytes", "blosc", "crc32c"])
    legacy = array_metadata((300, 7), "float32", 64, 320, codec, 3, checksum=False)
    assert "crc32c" not in [c["name"] for c in legacy["codecs"][0]["configuration"]["codecs"]]
    assert legacy == _zarr_meta(tmp_path, (300, 7), "float32", 64, 320, codec, 3, checksum=False)


@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
@pytest.mark.parametrize("shape,dtype,rows,shard_rows", [
    ((300, 7), "float32", 64, 320), ((300, 7), "float16", 64, 320), ((1000,), "int32", 256, 1024),
    ((5, 2), "int64", 8, 8), ((17,), "float64", 32, 32), ((0, 4), "float32", 1, 1)])
def test_metadata_equals_what_zarr_writes(tmp_path, codec, shape, dtype, rows, shard_rows):
    ours = array_metadata(shape, dtype, rows, shard_rows, codec, 3)
    assert ours == _zarr_meta(tmp_path, shape, dtype, rows, shard_rows, codec, 3)


@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
@pytest.mark.parametrize("threads", ["1", "2"])
def test_round_trip_through_zarr(tmp_path, monkeypatch, codec, threads):
    monkeypatch.setenv("CLAM2SAM_THREADS", threads)
    monkeypatch.setattr(fast_write, "SMALL_BYTES", 0)          # force the pool path on small data
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 33)).astype(np.float32)         # 1000 = 15 full chunks of 64 + 40 rows
    x[::7] = 0.0
    write_array(tmp_path / "a", x, rows=64, shard_rows=1024, codec=codec, clevel=3)
    got = zarr.open_array(str(tmp_path / "a"), mode="r")[...]
    np.testing.assert_array_equal(got, x)
    y = rng.integers(-5, 2**40, size=777).astype(">i8")         # big-endian input is stored little endian
    write_array(tmp_path / "b", y, rows=128, shard_rows=896, codec=codec, clevel=3)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "b"), mode="r")[...], y.astype("<i8"))


def test_shard_is_streamed_in_order_with_a_valid_crc(tmp_path):
    from google_crc32c import value as crc32c

    x = np.arange(10 * 4, dtype=np.float32).reshape(10, 4)
    write_array(tmp_path / "a", x, rows=4, shard_rows=12, codec="none", clevel=3)
    raw = (tmp_path / "a" / "c" / "0" / "0").read_bytes()
    idx_raw, crc = raw[-(3 * 16 + 4):-4], int.from_bytes(raw[-4:], "little")
    assert crc32c(idx_raw) == crc
    index = np.frombuffer(idx_raw, "<u8").reshape(3, 2)
    # offsets in order; each chunk = 4 rows x 4 x 4 bytes + its 4-byte CRC32C (little endian)
    assert index.tolist() == [[0, 68], [68, 68], [136, 68]]
    for off, _ in index.tolist():
        assert crc32c(raw[off:off + 64]) == int.from_bytes(raw[off + 64:off + 68], "little")
    np.testing.assert_array_equal(np.frombuffer(raw[0:64], "<f4").reshape(4, 4), x[:4])
    last = np.frombuffer(raw[136:200], "<f4").reshape(4, 4)
    np.testing.assert_array_equal(last[:2], x[8:])             # padded last chunk: data, then zeros
    assert not last[2:].any()
    legacy = write_array(tmp_path / "b", x, rows=4, shard_rows=12, codec="none", clevel=3, checksum=False)
    assert legacy is None
    raw = (tmp_path / "b" / "c" / "0" / "0").read_bytes()
    assert np.frombuffer(raw[-(3 * 16 + 4):-4], "<u8").reshape(3, 2).tolist() == [[0, 64], [64, 64], [128, 64]]


def test_empty_array_writes_metadata_only(tmp_path):
    write_array(tmp_path / "e", np.zeros((0, 8), np.float32), rows=1, shard_rows=1, codec="zstd", clevel=3)
    assert not (tmp_path / "e" / "c").exists()
    assert zarr.open_array(str(tmp_path / "e"), mode="r").shape == (0, 8)


def test_an_encoder_error_propagates(tmp_path, monkeypatch):
    monkeypatch.setenv("CLAM2SAM_THREADS", "2")
    monkeypatch.setattr(fast_write, "SMALL_BYTES", 0)

    def boom(codec, clevel, itemsize):
        def enc(block):
            raise MemoryError("no memory for this chunk")
        return enc

    monkeypatch.setattr(fast_write, "_encoder", boom)
    with pytest.raises(MemoryError):
        write_array(tmp_path / "a", np.ones((100, 3), np.float32), rows=8, shard_rows=104, codec="zstd", clevel=3)

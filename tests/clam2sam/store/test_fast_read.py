"""The single-read fast path returns exactly what zarr returns, and refuses corrupt shards."""
import numpy as np
import pytest
import zarr

from clam2sam.store.fast_read import read_whole_array
from clam2sam.store.writer import SlideArrays, StoreWriter, open_store, zarr_compressors


@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
@pytest.mark.parametrize("n,dtype", [(1, "float32"), (1000, "float16"), (3000, "float64"), (4097, "int64")])
def test_fast_read_equals_zarr(tmp_path, codec, n, dtype):
    rng = np.random.default_rng(n)
    x = (rng.normal(size=(n, 40)) * 100).astype(dtype)
    x[: min(n, 600)] = 0  # chunks equal to the fill value are not written by zarr: must read back as 0
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    rows = 512
    a = g.create_array("a", shape=x.shape, dtype=x.dtype, chunks=(rows, 40),
                       shards=(-(-n // rows) * rows, 40), compressors=zarr_compressors(codec, 3), fill_value=0)
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


# ------------------------------------------------------------------ threaded / direct-read paths

def _make(tmp_path, x, codec, rows, name="a", checksum=True):
    """A single-shard array like the store's (inner chunks of ``rows`` rows); returns its directory.
    ``checksum=False``: without per-chunk CRC32C (stores written before per-chunk checksums)."""
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="a")
    n = x.shape[0]
    a = g.create_array(name, shape=x.shape, dtype=x.dtype, chunks=(rows,) + x.shape[1:],
                       shards=(-(-n // rows) * rows,) + x.shape[1:],
                       compressors=zarr_compressors(codec, 3, checksum=checksum), fill_value=0)
    a[...] = x
    return tmp_path / "s.zarr" / name


@pytest.mark.parametrize("checksum", [True, False])
@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
@pytest.mark.parametrize("shape", [(5000,), (4097, 64), (1, 3), (3 * 256, 100)])
def test_threaded_equals_serial_equals_zarr(tmp_path, codec, shape, checksum, monkeypatch):
    import clam2sam.store.fast_read as fr

    monkeypatch.setattr(fr, "SMALL_BYTES", 0)          # use the pool even for these small arrays
    x = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32)
    if shape[0] > 600:
        x[256:512] = 0                                   # a fill-valued inner chunk (not stored by zarr)
    adir = _make(tmp_path, x, codec, rows=256, checksum=checksum)   # partial last chunk unless n % 256 == 0
    ref = zarr.open_array(str(adir))[...]
    serial = read_whole_array(adir, threads=1)
    threaded = read_whole_array(adir, threads=3)
    for got in (serial, threaded):
        assert got.dtype == x.dtype and got.shape == x.shape and got.flags.c_contiguous and got.flags.writeable
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(got, x)


def test_real_store_arrays_equal_zarr(tmp_path):
    """Every array of a slide written by the store reads back as zarr reads it, serial and threaded."""
    rng = np.random.default_rng(3)
    n = 3000
    f = rng.normal(size=(n, 300)).astype(np.float32)       # > 1 MiB: the pool path by default
    c = np.stack([np.arange(n) * 256, np.zeros(n)], 1).astype(np.int64)
    for codec in ("zstd", "lz4", "none"):
        with StoreWriter(tmp_path / f"{codec}.zarr", codec=codec) as w:
            w.write_slide(SlideArrays.from_partition("s1", f, c, np.arange(n) % 7))
        sdir = tmp_path / f"{codec}.zarr" / "slides" / "s1"
        for adir in sorted(p for p in sdir.iterdir() if p.is_dir()):
            ref = zarr.open_array(str(adir))[...]
            for t in (1, 2):
                got = read_whole_array(adir, threads=t)
                assert got is not None, adir.name
                assert got.dtype == ref.dtype and got.shape == ref.shape, adir.name
                np.testing.assert_array_equal(got, ref, err_msg=f"{codec} {adir.name} threads={t}")


def _rewrite_shard(adir, n_inner, order, gap=0):
    """Rewrite a shard with its chunks stored in ``order`` (and ``gap`` junk bytes between them)."""
    from google_crc32c import value

    shard = adir / "c" / "0" / "0" if (adir / "c" / "0").is_dir() else adir / "c" / "0"
    data = shard.read_bytes()
    index = np.frombuffer(data[-(16 * n_inner + 4):-4], dtype="<u8").reshape(n_inner, 2).copy()
    body, new = bytearray(), index.copy()
    for k in order:
        off, nb = (int(v) for v in index[k])
        if off == 2**64 - 1:
            continue
        body += b"\xab" * gap
        new[k] = (len(body), nb)
        body += data[off:off + nb]
    raw = new.astype("<u8").tobytes()
    shard.write_bytes(bytes(body) + raw + value(raw).to_bytes(4, "little"))
    return shard


@pytest.mark.parametrize("checksum", [True, False])
@pytest.mark.parametrize("codec", ["none", "zstd"])
@pytest.mark.parametrize("threads", [1, 2])
def test_chunks_out_of_order_are_read_right(tmp_path, codec, threads, checksum, monkeypatch):
    import clam2sam.store.fast_read as fr

    monkeypatch.setattr(fr, "SMALL_BYTES", 0)
    x = np.random.default_rng(7).normal(size=(1000, 16)).astype(np.float32)
    adir = _make(tmp_path, x, codec, rows=128, checksum=checksum)   # 8 inner chunks, last one partial
    _rewrite_shard(adir, 8, order=[3, 0, 7, 1, 6, 2, 5, 4], gap=24)
    np.testing.assert_array_equal(zarr.open_array(str(adir))[...], x)   # still a valid shard for zarr
    np.testing.assert_array_equal(read_whole_array(adir, threads=threads), x)


@pytest.mark.parametrize("threads", [1, 2])
def test_bad_chunk_extent_and_blosc_header_raise(tmp_path, threads, monkeypatch):
    from google_crc32c import value
    import clam2sam.store.fast_read as fr

    monkeypatch.setattr(fr, "SMALL_BYTES", 0)
    x = np.random.default_rng(8).normal(size=(1000, 16)).astype(np.float32)
    adir = _make(tmp_path, x, "lz4", rows=128)
    shard = adir / "c" / "0" / "0"
    good = shard.read_bytes()
    # 1) a chunk whose (offset, nbytes) runs past the data region, with a valid index checksum
    idx = np.frombuffer(good[-(16 * 8 + 4):-4], dtype="<u8").reshape(8, 2).copy()
    idx[2, 1] += 10_000_000
    raw = idx.tobytes()
    shard.write_bytes(good[:-(16 * 8 + 4)] + raw + value(raw).to_bytes(4, "little"))
    with pytest.raises(ValueError, match="outside the file"):
        read_whole_array(adir, threads=threads)
    # 2) a Blosc header claiming more compressed bytes than the chunk holds: the chunk's CRC32C catches it;
    #    in a store without per-chunk checksums the header check does
    bad = bytearray(good)
    off = int(np.frombuffer(good[-(16 * 8 + 4):-4], dtype="<u8")[2 * 3])
    bad[off + 12:off + 16] = (10**9).to_bytes(4, "little")
    shard.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="chunk 3 checksum mismatch"):
        read_whole_array(adir, threads=threads)
    legacy = _make(tmp_path, x, "lz4", rows=128, name="legacy", checksum=False)
    lshard = legacy / "c" / "0" / "0"
    lgood = lshard.read_bytes()
    bad = bytearray(lgood)
    off = int(np.frombuffer(lgood[-(16 * 8 + 4):-4], dtype="<u8")[2 * 3])
    bad[off + 12:off + 16] = (10**9).to_bytes(4, "little")
    lshard.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="Blosc header"):
        read_whole_array(legacy, threads=threads)
    # 3) truncated: index checksum / size check
    shard.write_bytes(good[: len(good) - 7])
    with pytest.raises(ValueError):
        read_whole_array(adir, threads=threads)


def _read_in_child(adir):
    import clam2sam.store.fast_read as fr

    return fr.read_whole_array(adir, threads=2), fr._POOL.owner_pid == __import__("os").getpid()


def test_pool_is_recreated_after_fork(tmp_path, monkeypatch):
    import multiprocessing

    import clam2sam.store.fast_read as fr

    monkeypatch.setattr(fr, "SMALL_BYTES", 0)
    x = np.random.default_rng(9).normal(size=(2000, 32)).astype(np.float32)
    adir = _make(tmp_path, x, "zstd", rows=256)
    np.testing.assert_array_equal(read_whole_array(adir, threads=2), x)   # parent's pool exists now
    assert fr._POOL.owner_pid is not None
    with multiprocessing.get_context("fork").Pool(1) as p:
        got, own_pool = p.apply(_read_in_child, (adir,))
    assert own_pool
    np.testing.assert_array_equal(got, x)


def test_read_threads_env_and_setter(monkeypatch):
    import clam2sam.store.fast_read as fr

    monkeypatch.delenv("CLAM2SAM_THREADS", raising=False)
    fr.set_read_threads(3)
    try:
        assert fr.read_threads() == 3
        monkeypatch.setenv("CLAM2SAM_THREADS", "1")
        assert fr.read_threads() == 1
    finally:
        fr.set_read_threads(None)
    monkeypatch.delenv("CLAM2SAM_THREADS")
    assert fr.read_threads() >= 1

"""Per-chunk CRC32C (Zarr v3 ``crc32c`` codec): one flipped bit in any chunk of any array is an error on every
read path (StoreReader / fit, zarr, ``inspect --check``); a deleted shard of a complete slide is an error, not
zeros; stores written before per-chunk checksums still read."""
from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import zarr

from clam2sam.store import schema
from clam2sam.store import writer as store_mod
from clam2sam.inspect.checks import check_store
from clam2sam.errors import StoreError
from clam2sam.store.fast_write import write_array
from clam2sam.store.writer import SlideArrays, StoreWriter, open_store

from ._helpers import REPO, cli_env, run_cli


def _slide(sid: str, n: int = 700, d: int = 40, seed: int = 0) -> SlideArrays:
    rng = np.random.default_rng(seed)
    coords = np.stack([np.arange(n) % 30 * 256, np.arange(n) // 30 * 256], 1)
    return SlideArrays.from_partition(sid, rng.normal(size=(n, d)).astype(np.float32), coords,
                                      rng.integers(-1, 9, n), attrs={"patch_size_level0": 256})


def _store(path, codec="lz4", slides=("a", "b")):
    with StoreWriter(path, codec=codec) as w:
        for k, sid in enumerate(slides):
            w.write_slide(_slide(sid, seed=k))
        w.finalize()
    return path


def _adir(store, sid, name):
    return store / schema.SLIDES_GROUP / sid / name


def _shard_file(store, sid, name):
    return next(p for p in (_adir(store, sid, name) / "c").rglob("*") if p.is_file())


def _chunks(shard) -> list[tuple[int, int]]:
    """(offset, nbytes) of every inner chunk, from the shard index (the last 16 n + 4 bytes, CRC-checked)."""
    from google_crc32c import value

    raw = shard.read_bytes()
    for n_inner in range(1, 1 << 12):
        idx = raw[-(16 * n_inner + 4):-4]
        if len(idx) == 16 * n_inner and value(idx) == int.from_bytes(raw[-4:], "little"):
            return [tuple(int(v) for v in r) for r in np.frombuffer(idx, "<u8").reshape(n_inner, 2)]
    raise AssertionError("no shard index found")


@pytest.mark.parametrize("codec", ["lz4", "zstd", "none"])
def test_one_flipped_bit_in_any_chunk_of_any_array_is_detected(tmp_path, codec):
    ref = _store(tmp_path / "ref.zarr", codec)
    r0 = open_store(ref)
    want = {n: r0.read_array("a", n) for n in schema.ALL_ARRAYS}
    rng = np.random.default_rng(1)
    for name in schema.ALL_ARRAYS:
        shard, adir = _shard_file(ref, "a", name), _adir(ref, "a", name)
        meta = json.loads((adir / "zarr.json").read_text())
        assert meta["codecs"][0]["configuration"]["codecs"][-1] == {"name": "crc32c"}, name
        good = shard.read_bytes()
        for k, (off, nb) in enumerate(_chunks(shard)):
            if off == 2**64 - 1:
                continue
            # first byte, a random data byte, the last byte of the chunk's own CRC
            for pos in sorted({off, off + int(rng.integers(0, nb)), off + nb - 1}):
                bad = bytearray(good)
                bad[pos] ^= 1 << int(rng.integers(0, 8))
                shard.write_bytes(bytes(bad))
                with pytest.raises(StoreError) as e:
                    open_store(ref).read_array("a", name)
                msg = str(e.value)
                assert "slide 'a'" in msg and repr(name) in msg and "checksum mismatch" in msg, msg
                with pytest.raises(Exception, match="checksum"):   # zarr's own reader agrees
                    zarr.open_array(str(adir), mode="r")[...]
        shard.write_bytes(good)
        np.testing.assert_array_equal(open_store(ref).read_array("a", name), want[name])


@pytest.mark.parametrize("codec", ["lz4", "none"])
def test_check_reports_a_flipped_bit_in_features(tmp_path, codec):
    path = _store(tmp_path / "c.zarr", codec)
    assert check_store(path).ok
    shard = _shard_file(path, "b", "features")
    off, nb = _chunks(shard)[0]
    bad = bytearray(shard.read_bytes())
    bad[off + nb // 2] ^= 0x10                               # one bit, mid-chunk
    shard.write_bytes(bytes(bad))
    res = check_store(path)
    assert [(p.slide, p.array) for p in res.problems] == [("b", "features")], res.problems
    assert "checksum mismatch" in res.problems[0].message
    p = run_cli("inspect", path, "--check")
    assert p.returncode == 1 and "Traceback" not in p.stderr and "checksum" in p.stdout, p.stdout + p.stderr


def test_deleted_shard_is_an_error_not_zeros(tmp_path):
    path = _store(tmp_path / "c.zarr")
    shard = _shard_file(path, "a", "features")
    shard.unlink()
    with pytest.raises(StoreError) as e:
        open_store(path).read_slide("a")
    msg = str(e.value)
    assert "slide 'a'" in msg and "features" in msg and "missing" in msg and str(shard) in msg, msg
    res = check_store(path)
    assert [(p.slide, p.array) for p in res.problems] == [("a", "features")]
    assert "missing" in res.problems[0].message


def test_fit_on_a_store_with_a_deleted_features_shard_fails_naming_slide_and_file(tmp_path):
    pytest.importorskip("trainer.run")
    from fixtures.synthetic import make_synthetic_store

    path = make_synthetic_store(tmp_path / "s.zarr", n_slides=24, n_side=5, dim=8, seed=2)
    sid = open_store(path).slide_ids()[4]
    shard = _shard_file(path, sid, "features")
    shard.unlink()
    p = subprocess.run([sys.executable, "-m", "trainer", "fit", str(path), "--out", str(tmp_path / "run"),
                        "--folds", "2", "--max-epochs", "1", "--threads", "1", "-q"], cwd=str(REPO), env=cli_env(),
                       capture_output=True, text=True, timeout=300)
    err = p.stderr.replace("\n", "")
    assert p.returncode == 1, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and f"slide {sid!r}" in err and str(shard) in err and "missing" in err, err
    assert not (tmp_path / "run" / "results.json").exists()


def test_store_without_per_chunk_checksums_still_reads(tmp_path, monkeypatch):
    """A store written before per-chunk checksums (no crc32c in the inner codecs) reads back the same."""
    monkeypatch.setattr(store_mod, "write_array", functools.partial(write_array, checksum=False))
    old = _store(tmp_path / "old.zarr")
    monkeypatch.undo()
    meta = json.loads((old / "slides" / "a" / "features" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"][0]["configuration"]["codecs"]] == ["bytes", "blosc"]
    new = _store(tmp_path / "new.zarr")
    ro, rn = open_store(old), open_store(new)
    for sid in ("a", "b"):
        for n in schema.ALL_ARRAYS:
            got = ro.read_array(sid, n)
            np.testing.assert_array_equal(got, rn.read_array(sid, n))
            np.testing.assert_array_equal(got, zarr.open_array(str(old / "slides" / sid / n), mode="r")[...])
    assert check_store(old).ok
    # zarr's own writer (older stores) leaves out the shard of an all-fill array: still zeros there
    zdir = old / "slides" / "a" / "segment_sam_area"
    before = ro.read_array("a", "segment_sam_area")
    assert not before.any() and before.size                  # from_partition's default: unknown SAM areas = 0
    for f in (zdir / "c").rglob("*"):
        if f.is_file():
            f.unlink()
    np.testing.assert_array_equal(open_store(old).read_array("a", "segment_sam_area"), before)
    # new slides written into the old store carry checksums; both kinds read side by side
    with StoreWriter(old) as w:
        w.write_slide(_slide("c", seed=9))
    assert open_store(old).read_slide("c").n_patches == 700 and check_store(old).ok
    shutil.rmtree(new)

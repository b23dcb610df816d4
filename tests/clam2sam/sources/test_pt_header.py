"""clam2sam.sources.pt_header: CLAM's plain-tensor .pt files mapped without torch; everything else left to torch."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from clam2sam.sources.pt_header import map_plain_tensor

REF = Path("/work/shared/fixtures/reference")


def _save(tmp_path, name, obj, **kw) -> Path:
    p = tmp_path / f"{name}.pt"
    torch.save(obj, p, **kw)
    return p


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_plain_tensor_equals_torch_load(tmp_path, dtype):
    t = (torch.randn(37, 11) * 100).to(dtype)
    p = _save(tmp_path, "t", t)
    got = map_plain_tensor(p)
    ref = torch.load(p, weights_only=True).numpy()
    assert isinstance(got, np.ndarray) and got.shape == (37, 11) and got.dtype == ref.dtype
    assert np.array_equal(got, ref)
    assert not got.flags.writeable                      # a read-only map: the source is never modified


def test_reference_fixtures_map_like_torch():
    files = sorted(REF.glob("*/pt_files/*.pt"))
    if not files:
        pytest.skip("reference fixtures not available")
    for p in files:
        got = map_plain_tensor(p)
        ref = torch.load(p, weights_only=True, mmap=True).numpy()
        assert got is not None and got.shape == ref.shape and np.array_equal(got, ref), p


@pytest.mark.parametrize("obj", [
    torch.randn(6, 3)[2:],               # a view into a larger storage
    torch.randn(3, 4).t(),               # not C-contiguous
    torch.randn(5),                      # 1-D
    torch.randn(2, 2, 2),                # 3-D
    torch.randn(2, 2).bfloat16(),        # no numpy dtype
    torch.arange(6).reshape(2, 3),       # integers
    {"features": torch.randn(2, 2)},     # not a bare tensor
    np.ones((2, 2), np.float32),         # TRIDENT-style numpy payload
])
def test_anything_else_goes_to_torch(tmp_path, obj):
    assert map_plain_tensor(_save(tmp_path, "x", obj)) is None


def test_legacy_format_truncated_and_garbage_go_to_torch(tmp_path):
    assert map_plain_tensor(_save(tmp_path, "legacy", torch.randn(3, 3), _use_new_zipfile_serialization=False)) is None
    good = _save(tmp_path, "good", torch.randn(50, 8))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:-100])          # the zip directory is gone
    assert map_plain_tensor(cut) is None
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip at all")
    assert map_plain_tensor(junk) is None
    assert map_plain_tensor(tmp_path / "missing.pt") is None


def test_foreign_globals_are_never_called(tmp_path):
    """A .pt whose pickle names any other global is refused before anything runs."""
    good = _save(tmp_path, "good", torch.randn(4, 4))
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data.pkl"):
                data = pickle.dumps(subprocess.check_call, protocol=2)   # would run a program if called
            zout.writestr(info, data)
    assert map_plain_tensor(bad) is None


def test_big_endian_storage_goes_to_torch(tmp_path):
    good = _save(tmp_path, "good", torch.randn(4, 4))
    big = tmp_path / "big.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info, b"big" if info.filename.endswith("/byteorder") else zin.read(info))
    assert map_plain_tensor(big) is None


def test_convert_of_a_clam_archive_does_not_import_torch(tmp_path):
    """The .pt cross-check of a CLAM archive (h5 + pt) runs without torch, and still catches a stale .pt."""
    if not (REF / "clam" / "h5_files").is_dir():
        pytest.skip("reference fixtures not available")
    out = tmp_path / "s.zarr"
    code = f"""
import sys
from clam2sam.cli.main import main
try:
    main(["convert", {str(REF / 'clam')!r}, "--segments-dir", {str(REF / 'sammil' / 'segments')!r},
          "--slides-dir", {str(REF / 'slides')!r}, "--level-downsample", "ihc_tiled=1:2", "--out", {str(out)!r},
          "-q", "--skip-errors"])
except SystemExit as e:
    print("RC", e.code)
print("TORCH", "torch" in sys.modules)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "RC 0" in p.stdout and "TORCH False" in p.stdout, p.stdout + p.stderr[-3000:]
    rep = json.loads((out / "convert_report.json").read_text())
    assert rep["counts"]["converted"] == 3, rep   # every .pt cross-checked (and passed) without torch


def test_stale_pt_still_detected_without_torch(tmp_path):
    """Cross-check through the map: a .pt whose rows differ from the h5 is still refused, naming the file."""
    import h5py

    from clam2sam.sources.discover import SlideFiles
    from clam2sam.errors import InputFormatError
    from clam2sam.sources.readers import read_slide_inputs

    feats = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
    h5 = tmp_path / "s.h5"
    with h5py.File(h5, "w") as f:
        f["features"] = feats
        f["coords"] = np.arange(18).reshape(9, 2)
    stale = feats.copy()
    stale[4] += 1                                           # the middle row differs
    pt = _save(tmp_path, "s", torch.from_numpy(stale))
    assert map_plain_tensor(pt) is not None
    files = SlideFiles(slide_id="s", features_h5=h5, features_pt=pt)
    with pytest.raises(InputFormatError, match="differ from the h5") as e:
        read_slide_inputs(files, layout="clam-fp")
    assert str(pt) in str(e.value)
    torch.save(torch.from_numpy(feats[:8].copy()), pt)      # one row short
    with pytest.raises(InputFormatError, match="8 rows but the h5 has 9"):
        read_slide_inputs(files, layout="clam-fp")
    torch.save(torch.from_numpy(feats), pt)
    assert np.array_equal(read_slide_inputs(files, layout="clam-fp").features, feats)

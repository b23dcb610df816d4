"""clam2sam.store.root: the root group written without zarr, byte for byte as zarr writes it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from clam2sam.errors import StoreError
from clam2sam.store.writer import SlideArrays, StoreWriter, open_store
from clam2sam.store.root import JsonGroup

ATTRS = {"schema_version": 1, "tool": "clam2sam", "n": None, "x": 1.5, "nan": float("nan"), "u": "é",
         "nested": {"a": [1, 2, {"b": None}]}}


def test_create_set_require_group_same_bytes_as_zarr(tmp_path):
    z = zarr.open_group(str(tmp_path / "z"), mode="a", attributes=dict(ATTRS))
    j = JsonGroup.create(tmp_path / "j", dict(ATTRS))
    assert (tmp_path / "j/zarr.json").read_bytes() == (tmp_path / "z/zarr.json").read_bytes()
    z.require_group("slides")
    j.require_group("slides")
    assert (tmp_path / "j/slides/zarr.json").read_bytes() == (tmp_path / "z/slides/zarr.json").read_bytes()
    for g in (z, j):
        g.attrs["n"] = 7                  # existing key: keeps its place
        g.attrs["new"] = "last"          # new key: appended
    assert (tmp_path / "j/zarr.json").read_bytes() == (tmp_path / "z/zarr.json").read_bytes()
    # reopened: both read the other's document
    again = JsonGroup.open(tmp_path / "z")
    assert isinstance(again, JsonGroup) and dict(again.attrs)["new"] == "last" and again.attrs.get("n") == 7
    assert zarr.open_group(str(tmp_path / "j"), mode="r").attrs["new"] == "last"
    assert isinstance(j["slides"], JsonGroup)
    with pytest.raises(KeyError):
        j["nope"]


def test_unusual_or_damaged_root_goes_to_zarr(tmp_path):
    for name, text in (("bad", "{not json"), ("arr", json.dumps({"zarr_format": 3, "node_type": "array"})),
                       ("extra", json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}, "x": 1}))):
        d = tmp_path / name
        d.mkdir()
        (d / "zarr.json").write_text(text)
        with pytest.raises(Exception):   # zarr refuses what it refused before (messages are zarr's)
            JsonGroup.open(d)


def test_writer_on_damaged_root_reports_corrupt_metadata(tmp_path):
    store = tmp_path / "c.zarr"
    with StoreWriter(store) as w:
        w.write_slide(SlideArrays.from_partition("s1", np.ones((3, 2), np.float32), np.zeros((3, 2)), None))
        w.finalize()
    (store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gro')
    with pytest.raises(StoreError, match="corrupt store metadata"):
        StoreWriter(store)


def test_resume_after_finalize_keeps_consolidated_and_attrs(tmp_path):
    """A second writer on a finalized store (consolidated metadata in the root) updates attrs and re-finalizes."""
    store = tmp_path / "c.zarr"
    f = np.arange(12, dtype=np.float32).reshape(4, 3)
    with StoreWriter(store, encoder=None) as w:
        w.write_slide(SlideArrays.from_partition("a", f, np.zeros((4, 2)), np.array([0, 0, 1, -1])))
        w.finalize()
    with StoreWriter(store, encoder="enc") as w:
        assert isinstance(w.root, JsonGroup) and w.root.attrs["feature_dim"] == 3
        w.write_slide(SlideArrays.from_partition("b", f, np.zeros((4, 2)), None))
        w.finalize()
    root = json.loads((store / "zarr.json").read_text())
    assert root["attributes"]["encoder"] == "enc" and root["attributes"]["n_slides"] == 2
    assert set(root["consolidated_metadata"]["metadata"]) >= {"slides/a", "slides/b", "slides/b/features"}
    assert zarr.open_consolidated(str(store)).attrs["n_slides"] == 2
    assert open_store(store).slide_ids() == ["a", "b"]


def test_convert_does_not_import_zarr_or_torch(tmp_path):
    ref = Path("/work/shared/fixtures/reference")
    if not (ref / "clam" / "h5_files").is_dir():
        pytest.skip("reference fixtures not available")
    out = tmp_path / "s.zarr"
    code = f"""
import sys
from clam2sam.cli.main import main
try:
    main(["convert", {str(ref / 'clam')!r}, "--segments-dir", {str(ref / 'sammil' / 'segments')!r},
          "--slides-dir", {str(ref / 'slides')!r}, "--level-downsample", "ihc_tiled=1:2", "--out", {str(out)!r}, "-q"])
except SystemExit as e:
    print("RC", e.code)
print("HEAVY", sorted(m for m in ("zarr", "torch", "matplotlib", "sklearn", "dask", "rich") if m in sys.modules))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "RC 0" in p.stdout and "HEAVY []" in p.stdout, p.stdout + p.stderr[-3000:]
    assert zarr.open_consolidated(str(out)).attrs["n_slides"] == 3

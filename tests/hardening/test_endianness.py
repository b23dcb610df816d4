"""Big-endian feature files: read, byte-swapped to the store's little-endian, source byte order recorded. A mixed
cohort converts into one store and passes `inspect --check`; so does an all-big-endian one."""
from __future__ import annotations

import numpy as np
import pytest

from clam2sam.convert.cohort import ConvertOptions, convert_cohort
from clam2sam.store.writer import open_store

from tests.clam2sam import archive_factory as af
from ._helpers import run_cli


def _archive(root, orders: dict[str, str], dtype=np.float32):
    """CLAM h5 features (no .pt: torch has no big-endian tensors) in the given byte order per slide."""
    data = {}
    for k, (sid, bo) in enumerate(orders.items()):
        f = af.features(30, 8, seed=k, dtype=np.dtype(dtype).newbyteorder(bo))
        c = af.grid_coords(30)
        af.write_features_h5(root / "h5_files" / f"{sid}.h5", f, c.astype(np.dtype(">i8") if bo == ">" else np.int64))
        af.write_patches_h5(root / "patches" / f"{sid}.h5", c)
        data[sid] = f
    return data


@pytest.mark.parametrize("orders", [{"a": ">", "b": "<", "c": ">"}, {"a": ">", "b": ">"}, {"a": "<", "b": ">"}],
                         ids=["big-first-mixed", "all-big", "little-first-mixed"])
def test_big_endian_features_stored_little_endian(tmp_path, orders):
    arch, out = tmp_path / "arch", tmp_path / "c.zarr"
    data = _archive(arch, orders)
    rep = convert_cohort(ConvertOptions(archive=arch, out=out))
    assert rep.return_code == 0 and rep.counts()["converted"] == len(orders), rep.to_dict()
    r = open_store(out)
    assert r.attrs["feature_dtype"] == "float32"
    for sid, bo in orders.items():
        bag = r.read_slide(sid)
        assert bag.features.dtype == np.dtype("<f4")
        np.testing.assert_array_equal(bag.features, data[sid].astype("<f4"))  # values, not bytes, preserved
        assert r.slide_attrs(sid)["source_byte_order"] == ("big" if bo == ">" else "little")
    p = run_cli("inspect", out, "--check")
    assert p.returncode == 0, p.stdout + p.stderr


def test_big_endian_float16_trident_like(tmp_path):
    arch, out = tmp_path / "arch", tmp_path / "c.zarr"
    data = _archive(arch, {"x": ">", "y": "<"}, dtype=np.float16)
    rep = convert_cohort(ConvertOptions(archive=arch, out=out))
    assert rep.return_code == 0, rep.to_dict()
    r = open_store(out)
    assert r.attrs["feature_dtype"] == "float16"
    np.testing.assert_array_equal(r.read_slide("x").features, data["x"].astype("<f2"))

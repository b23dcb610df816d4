import shutil

import h5py
import numpy as np
import pytest

from clam2sam.sources.discover import SlideFiles
from clam2sam.errors import InputFormatError, LegacyFormatError
from clam2sam.sources.readers import read_slide_inputs

from tests.clam2sam import archive_factory as af
from tests.clam2sam.archive_factory import REFERENCE

needs_ref = pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference fixtures not present")


def _files(root, sid, **kw):
    d = {"features_h5": root / "h5_files" / f"{sid}.h5", "features_pt": root / "pt_files" / f"{sid}.pt",
         "patches_h5": root / "patches" / f"{sid}.h5"}
    d.update(kw)
    return SlideFiles(sid, **{k: (v if v is not None and v.exists() else None) for k, v in d.items()})


@needs_ref
def test_reference_clam_slide():
    ls = read_slide_inputs(_files(REFERENCE / "clam", "ihc_tiled"), layout="clam-fp", expect_pt=True)
    assert ls.features.shape == (237, 1024) and ls.features.dtype == np.float32
    assert ls.coords.dtype == np.int64 and ls.coords[:3].tolist() == [[1508, 0], [1508, 128], [1508, 256]]
    assert ls.coords[-1].tolist() == [384, 1792] and ls.patch_size_level0 == 128.0 and not ls.warnings
    assert ls.patch_info["patch_level"] == 0 and [r for r, _ in ls.sources] == ["features_h5", "features_pt", "patches_h5"]


@needs_ref
def test_reference_sammil_group_rows_dropped():
    root = REFERENCE / "sammil"
    clam = read_slide_inputs(_files(REFERENCE / "clam", "cmu_small_region"), layout="clam-fp")
    ls = read_slide_inputs(SlideFiles("cmu_small_region", features_h5=root / "h5_files/cmu_small_region.h5",
                                      features_pt=root / "pt_files/cmu_small_region.pt"), layout="sammil")
    assert ls.n_group_rows == 11 and ls.features.shape == (182, 1024)
    np.testing.assert_array_equal(ls.features, clam.features)
    np.testing.assert_array_equal(ls.coords, clam.coords)
    assert ls.patch_size_level0 is None  # no patches h5 there
    # pt-only SAM-MIL (193 rows, no marker) + sam_info + CLAM patches
    ls2 = read_slide_inputs(SlideFiles("cmu_small_region", features_pt=root / "pt_files/cmu_small_region.pt",
                                       patches_h5=REFERENCE / "clam/patches/cmu_small_region.h5",
                                       sam_info_h5=root / "sam_info/cmu_small_region.h5"), layout="sammil")
    assert ls2.n_group_rows == 11
    np.testing.assert_array_equal(ls2.features, clam.features)
    np.testing.assert_array_equal(ls2.coords, clam.coords)
    # pt-only SAM-MIL without sam_info: refused with a hint
    with pytest.raises(InputFormatError, match="sam-info-dir"):
        read_slide_inputs(SlideFiles("cmu_small_region", features_pt=root / "pt_files/cmu_small_region.pt",
                                     patches_h5=REFERENCE / "clam/patches/cmu_small_region.h5"), layout="sammil")


def test_pt_only_takes_coords_from_patches(tmp_path):
    data = af.make_clam(tmp_path, {"001": 20}, h5=False)
    ls = read_slide_inputs(_files(tmp_path, "001"), layout="clam-fp")
    np.testing.assert_array_equal(ls.features, data["001"][0])
    np.testing.assert_array_equal(ls.coords, data["001"][1])
    assert ls.patch_size_level0 == 64.0


def test_trident_float16_and_numpy_pt(tmp_path):
    data = af.make_trident(tmp_path, {"a": 10})
    cfg = tmp_path / "20x_64px_0px_overlap"
    ls = read_slide_inputs(SlideFiles("a", features_h5=cfg / "features_uni_v1/a.h5",
                                      patches_h5=cfg / "patches/a_patches.h5"), layout="trident")
    assert ls.features.dtype == np.float16 and ls.encoder == "uni_v1" and ls.patch_size_level0 == 64.0
    np.testing.assert_array_equal(ls.features, data["a"][0])
    job2 = tmp_path / "j2"
    data2 = af.make_trident(job2, {"b": 7}, saveas="pt")
    cfg2 = job2 / "20x_64px_0px_overlap"
    ls2 = read_slide_inputs(SlideFiles("b", features_pt=cfg2 / "features_uni_v1/b.pt",
                                       patches_h5=cfg2 / "patches/b_patches.h5"), layout="trident")
    assert ls2.features.dtype == np.float16
    np.testing.assert_array_equal(ls2.features, data2["b"][0])


def test_legacy_coords_scaled_or_refused(tmp_path):
    f, c = af.features(6), af.grid_coords(6, 64)
    af.write_features_h5(tmp_path / "h5_files/L.h5", f, c)
    af.write_patches_h5(tmp_path / "patches/L.h5", c, imgs_attrs={"downsample": np.array([4.0, 4.0]), "patch_level": 1},
                        patch_px=64)
    ls = read_slide_inputs(_files(tmp_path, "L"), layout="clam-fp")
    assert ls.layout == "clam-legacy" and ls.patch_size_level0 == 256.0
    np.testing.assert_array_equal(ls.coords, c * 4)
    ls = read_slide_inputs(_files(tmp_path, "L"), layout="clam-fp", legacy_downsample=2)
    np.testing.assert_array_equal(ls.coords, c * 2)
    af.write_patches_h5(tmp_path / "patches/L.h5", c, imgs_attrs={"patch_level": 1})
    with pytest.raises(LegacyFormatError) as e:
        read_slide_inputs(_files(tmp_path, "L"), layout="clam-fp")
    assert "--legacy-downsample" in str(e.value) and "slide 'L'" in str(e.value) and "L.h5" in str(e.value)
    # forced legacy layout without patches
    with pytest.raises(LegacyFormatError):
        read_slide_inputs(SlideFiles("L", features_h5=tmp_path / "h5_files/L.h5"), layout="clam-legacy")


def test_h5_without_pt_warns(tmp_path):
    af.make_clam(tmp_path, {"s": 5}, pt=False)
    ls = read_slide_inputs(_files(tmp_path, "s"), layout="clam-fp", expect_pt=True)
    assert any("possibly incomplete" in w for w in ls.warnings)


@pytest.mark.parametrize("case", ["truncated", "pt_rows", "pt_values", "coords_rows", "nan", "inf", "empty",
                                  "no_features", "patches_rows", "no_coords"])
def test_bad_inputs_name_slide_file_and_fix(tmp_path, case):
    af.make_clam(tmp_path, {"s": 12})
    h5, pt = tmp_path / "h5_files/s.h5", tmp_path / "pt_files/s.pt"
    bad = h5
    if case == "truncated":
        data = h5.read_bytes()
        h5.write_bytes(data[: len(data) // 3])
    elif case == "pt_rows":
        af.write_pt(pt, af.features(10)); bad = pt
    elif case == "pt_values":
        af.write_pt(pt, af.features(12, seed=99)); bad = pt
    elif case == "coords_rows":
        af.write_features_h5(h5, af.features(12), af.grid_coords(11)); (tmp_path / "patches/s.h5").unlink()
        pt.unlink()
    elif case in ("nan", "inf"):
        f = af.features(12); f[3, 1] = np.nan if case == "nan" else np.inf
        af.write_features_h5(h5, f, af.grid_coords(12)); pt.unlink()
    elif case == "empty":
        af.write_features_h5(h5, np.zeros((0, 8), np.float32), np.zeros((0, 2), np.int64)); pt.unlink()
    elif case == "no_features":
        with h5py.File(h5, "w") as f:
            f["coords"] = af.grid_coords(12)
        pt.unlink()
    elif case == "patches_rows":
        af.write_patches_h5(tmp_path / "patches/s.h5", af.grid_coords(13))
    elif case == "no_coords":
        af.write_features_h5(h5, af.features(12)); (tmp_path / "patches/s.h5").unlink()
    with pytest.raises(InputFormatError) as e:
        read_slide_inputs(_files(tmp_path, "s"), layout="clam-fp")
    msg = str(e.value)
    assert "slide 's'" in msg and str(bad) in msg and " -- " in msg, msg
    expect = {"truncated": "unreadable", "pt_rows": "10 rows", "pt_values": "differ", "coords_rows": "11 rows",
              "nan": "NaN", "inf": "NaN or inf", "empty": "empty bag", "no_features": "no 'features'",
              "patches_rows": "13", "no_coords": "no patches h5"}[case]
    assert expect in msg


def test_sources_never_modified(tmp_path):
    src = tmp_path / "a"
    af.make_clam(src, {"x": 9})
    before = af.file_hashes(src)
    read_slide_inputs(_files(src, "x"), layout="clam-fp")
    assert af.file_hashes(src) == before
    shutil.rmtree(src)


def test_pt_sample_rows_read_directly_equal_the_tensor(tmp_path):
    import torch

    from clam2sam.sources.readers import _peek_pt, pt_rows_direct

    x = torch.randn(1000, 24)
    torch.save(x, tmp_path / "a.pt")
    pt = _peek_pt(tmp_path / "a.pt", "a")
    got = pt_rows_direct(tmp_path / "a.pt", pt, [0, 500, 999])
    np.testing.assert_array_equal(got, x.numpy()[[0, 500, 999]])
    torch.save(x[:, :12], tmp_path / "view.pt")          # a view of a larger storage: falls back (None)
    v = _peek_pt(tmp_path / "view.pt", "v")
    assert pt_rows_direct(tmp_path / "view.pt", v, [0]) is None


def test_pt_cross_check_still_catches_differing_rows(tmp_path):
    """The .pt's middle row differs from the h5's: refused, via the direct row reads."""
    import torch

    from clam2sam.sources.discover import SlideFiles
    from clam2sam.errors import InputFormatError
    from clam2sam.sources.readers import read_slide_inputs

    f = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    c = (np.arange(100).reshape(50, 2) * 256).astype(np.int64)
    with h5py.File(tmp_path / "s.h5", "w") as h:
        h["features"], h["coords"] = f, c
    g = f.copy()
    g[25] += 1
    torch.save(torch.from_numpy(g), tmp_path / "s.pt")
    files = SlideFiles(slide_id="s", features_h5=tmp_path / "s.h5", features_pt=tmp_path / "s.pt")
    with pytest.raises(InputFormatError, match="differ from the h5"):
        read_slide_inputs(files, layout="clam-fp", patch_size_level0=256)

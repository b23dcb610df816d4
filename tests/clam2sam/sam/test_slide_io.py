import pickle

import numpy as np
import openslide
import pytest

from clam2sam.sam import slide_io as sio
from clam2sam.errors import SamError

from tests.clam2sam._sam_fixtures import CMU_SLIDE, cmu_coords, synthetic_rgb, write_pyramid_tiff


@pytest.fixture(scope="module")
def tiff(tmp_path_factory):
    d = tmp_path_factory.mktemp("slides")
    level0 = synthetic_rgb(2048, seed=3)
    write_pyramid_tiff(d / "pyr.tif", level0, n_levels=3)
    return d / "pyr.tif", level0


@pytest.mark.parametrize("w,h,D", [(1932, 2896, 4), (2004, 2044, 2), (1024, 1024, 1), (1025, 10, 2),
                                   (60000, 90000, 128), (500, 300, 1), (4096, 4097, 8)])
def test_sam_mil_downsample(w, h, D):
    assert sio.sam_mil_downsample(w, h) == D
    assert w / D <= 1024 and h / D <= 1024 and (D == 1 or max(w, h) / (D // 2) > 1024)


def test_choose_level_like_sam_mil():
    tcga = [(1.0, 1.0), (4.0001, 4.0002), (16.0, 16.0), (64.01, 64.0)]  # Aperio-like (1, 4, 16, 64)
    assert sio.choose_level(tcga, 128) == 3  # ds 64, resize /2 (SAM-MIL note example)
    assert sio.choose_level(tcga, 2) == 0
    assert sio.choose_level(tcga, 4) == 1
    assert sio.choose_level(tcga, 8) == 1
    gen = [(1.0, 1.0), (2.0, 2.0), (4.0, 4.0)]
    assert sio.choose_level(gen, 2) == 1 and sio.choose_level(gen, 1) == 0 and sio.choose_level(gen, 16) == 2


def test_geometry_of_the_reference_pickle_is_reproduced():
    """SAM-MIL's cmu_small_region.pkl: bbox (64,70)-(1996,2966) -> level 0, resize 4, masks (724, 483)."""
    with openslide.OpenSlide(str(CMU_SLIDE)) as s:
        contour = np.array([[[64, 70]], [[1996, 70]], [[1996, 2966]], [[64, 2966]]], np.int32)  # CLAM (K,1,2)
        box = sio.tissue_box_from_contours([contour], s.dimensions)
        g = sio.plan_geometry(box, s.level_dimensions)
    assert (box.w, box.h) == (1932, 2896)
    assert (g.vis_level, g.downsample_ratio, g.total_downsample) == (0, 4, 4)
    assert (g.height, g.width) == (724, 483)


def test_geometry_from_coords_on_the_real_slide():
    coords = cmu_coords()
    with sio.open_slide(CMU_SLIDE, "cmu") as s:
        box = sio.tissue_box_from_coords(coords, 128, s.dimensions)
        g = sio.plan_geometry(box, s.level_dimensions)
        img = sio.read_sam_image(s, g)
        ref = np.asarray(s.read_region((64, 70), 0, (1920, 2897)).convert("RGB"))
    # patches x 64..1856(+128), y 70..2886(+128) clipped at the 2967-px slide edge
    assert (box.start_x, box.start_y, box.stop_x, box.stop_y) == (64, 70, 1984, 2967)
    assert (g.vis_level, g.downsample_ratio, g.total_downsample, g.width, g.height) == (0, 4, 4, 480, 724)
    assert img.shape == (724, 480, 3) and img.dtype == np.uint8
    # the image is the level-0 region, bicubic-resized by 4: compare 4x4 block means (tissue, not blank)
    blocks = ref[:2896, :1920].reshape(724, 4, 480, 4, 3).mean((1, 3))
    assert np.abs(blocks - img).mean() < 4.0
    assert img.std() > 10


def test_pyramid_tiff_reads_level_1_without_resize(tiff):
    path, level0 = tiff
    coords = np.array([[512, 256], [1792, 1920], [640, 384]])
    with sio.open_slide(path, "pyr") as s:
        assert s.level_count == 3 and s.properties["openslide.vendor"] == "generic-tiff"
        box = sio.tissue_box_from_coords(coords, 128, s.dimensions)  # 512..1920 x 256..2048 -> 1408 x 1792
        g = sio.plan_geometry(box, s.level_dimensions)
        img = sio.read_sam_image(s, g)
        lvl1 = np.asarray(s.read_region((0, 0), 1, (1024, 1024)).convert("RGB"))
    assert (g.vis_level, g.downsample_ratio, g.total_downsample) == (1, 1, 2)
    assert (g.width, g.height) == (704, 896)
    assert np.array_equal(img, lvl1[128:128 + 896, 256:256 + 704])  # exact: level-1 pixels at start / 2


def test_ratio_above_one_at_a_coarser_level():
    dims = [(40000, 30000), (10000, 7500), (2500, 1875)]  # downsamples 4, 16
    g = sio.plan_geometry(sio.TissueBox(1000, 2000, 33000, 26000, "coords"), dims)
    assert sio.sam_mil_downsample(32000, 24000) == 32
    assert (g.vis_level, g.downsample_ratio, g.total_downsample) == (2, 2, 32)
    assert (g.width, g.height) == (1000, 750)
    assert sio.read_size(g) == (2000, 1500)


def test_strip_reading_matches_one_shot(tiff):
    with sio.open_slide(CMU_SLIDE) as s:  # single level, resize 4: bicubic bands with margins
        g = sio.plan_geometry(sio.tissue_box_from_coords(cmu_coords(), 128, s.dimensions), s.level_dimensions)
        one = sio.read_sam_image(s, g)
        strips = sio.read_sam_image(s, g, max_read_pixels=300_000)
    diff = np.abs(one.astype(int) - strips)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-4
    path, _ = tiff
    with sio.open_slide(path) as s:  # ratio 1: plain strips, exact
        g = sio.plan_geometry(sio.TissueBox(0, 0, 2048, 2048, "coords"), s.level_dimensions)
        assert np.array_equal(sio.read_sam_image(s, g), sio.read_sam_image(s, g, max_read_pixels=50_000))


def test_find_slide_any_extension(tmp_path):
    for name in ("a.svs", "b.ome.tif", "c.ndpi", "notes.txt", "a.h5"):
        (tmp_path / name).write_bytes(b"x")
    sio.clear_slide_index()
    assert sio.find_slide(tmp_path, "a").name == "a.svs"
    assert sio.find_slide(tmp_path, "b").name == "b.ome.tif"
    with pytest.raises(SamError, match="slide 'zz'.*no slide file for this feature file"):
        sio.find_slide(tmp_path, "zz")
    (tmp_path / "c.tif").write_bytes(b"x")
    sio.clear_slide_index()
    with pytest.raises(SamError, match="several slide files share this id: c.ndpi, c.tif"):
        sio.find_slide(tmp_path, "c")
    with pytest.raises(SamError, match="slides directory not found"):
        sio.find_slide(tmp_path / "missing", "a")


def test_unreadable_slide(tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 100)
    with pytest.raises(SamError, match=r"slide 'broken'.*broken.svs: OpenSlide cannot read this slide"):
        sio.open_slide(bad, "broken")
    with pytest.raises(SamError, match="slide file not found"):
        sio.open_slide(tmp_path / "gone.svs", "gone")


def test_coords_that_contradict_the_slide():
    coords = cmu_coords()
    sio.check_coords_fit(coords, (2220, 2967))
    with pytest.raises(SamError, match=r"span x 64..1856, y 70..2886 but the slide is 1000x1000 px.*does not match"):
        sio.check_coords_fit(coords, (1000, 1000), slide_id="cmu")
    with pytest.raises(SamError, match="x -5"):
        sio.check_coords_fit(np.array([[-5, 0]]), (100, 100))
    with pytest.raises(SamError, match="no patch coordinates"):
        sio.check_coords_fit(np.zeros((0, 2)), (100, 100))


def test_clam_contour_pickle(tmp_path):
    tissue = [np.array([[[100, 50]], [[900, 60]], [[880, 700]]], np.int32),
              np.array([[[1200, 800]], [[1300, 1500]]], np.int32)]
    p = tmp_path / "s_mask.pkl"
    p.write_bytes(pickle.dumps({"holes": [[], []], "tissue": tissue}))
    got = sio.load_clam_contours(p, "s")
    box = sio.tissue_box_from_contours(got, (2000, 1400))
    assert (box.start_x, box.start_y, box.stop_x, box.stop_y, box.source) == (100, 50, 1300, 1400, "contours")
    p.write_bytes(pickle.dumps({"tissue": []}))
    with pytest.raises(SamError, match="not a CLAM segmentation pickle"):
        sio.load_clam_contours(p, "s")

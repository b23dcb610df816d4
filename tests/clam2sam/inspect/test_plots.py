"""``inspect --plot``: PNG sizes and segment colours at the pixels where known patches land."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clam2sam.inspect.plots import (UNASSIGNED, find_slide_files, plot_cohort, plot_slide, plot_store, read_thumbnail,
                            segment_color)
from clam2sam.store.writer import SlideArrays, open_store
from tests.clam2sam.inspect.test_stats import make_store

PS = 512
REAL_SLIDE = Path("/work/shared/data/cmu_small_region.svs")


def blocky_slide(sid="s1", nx=24, ny=16, x_off=1024, y_off=2048):
    """Patches on an nx x ny grid; segment = 3x3 block of patches, every 5th block unassigned."""
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))
    gx, gy = gx.ravel(), gy.ravel()
    coords = np.stack([x_off + gx * PS, y_off + gy * PS], 1)
    block = (gy // 3) * ((nx + 2) // 3) + gx // 3
    seg = np.where(block % 5 == 4, -1, block)
    _, seg_c = np.unique(seg, return_inverse=True)  # contiguous 0..S-1 over assigned blocks
    seg = np.where(seg < 0, -1, seg_c - (seg.min() < 0))
    f = np.random.default_rng(0).normal(size=(len(seg), 4)).astype(np.float32)
    return SlideArrays.from_partition(sid, f, coords, seg, attrs={"patch_size_level0": PS})


def rgb_at(img, col, row):
    return np.asarray(img.convert("RGB"))[row, col].astype(int)


def expected(color):
    return (np.asarray(color) * 255).round().astype(int)


def test_slide_picture_size_and_colours(tmp_path):
    s = blocky_slide()
    pic = plot_slide(tmp_path / "s.png", "s1", s.coords, s.segment_ids, PS)
    img = Image.open(pic.path)
    assert img.size == (pic.width, pic.height) and 1000 <= img.width <= 1600 and 400 <= img.height <= 1400
    left, top, w, h = pic.axes_box
    # the map keeps the data aspect (24 x 16 patches)
    assert abs(w / h - 24 / 16) < 0.01
    checked = {"assigned": 0, "unassigned": 0}
    for i in range(0, len(s.segment_ids), 7):
        x, y = s.coords[i] + PS / 2  # patch centre
        col = left + (x - pic.view[0]) / (pic.view[1] - pic.view[0]) * w  # computed here, not by pixel_of
        row = top + (y - pic.view[2]) / (pic.view[3] - pic.view[2]) * h
        assert (int(col), int(row)) == pic.pixel_of(x, y)
        k = int(s.segment_ids[i])
        want = expected(segment_color(k)) if k >= 0 else expected(UNASSIGNED)
        assert np.abs(rgb_at(img, int(col), int(row)) - want).max() <= 2, (i, k)
        checked["assigned" if k >= 0 else "unassigned"] += 1
    assert checked["assigned"] > 20 and checked["unassigned"] > 5
    # neighbouring segments get different colours
    assert segment_color(0) != segment_color(1) != UNASSIGNED


def test_colour_of_patch_matches_its_segment_not_its_neighbour(tmp_path):
    """A single odd patch inside a block is drawn in its own colour."""
    s = blocky_slide()
    seg = s.segment_ids.copy()
    i = 5 * 24 + 7  # row 5, column 7
    seg[i] = 0 if seg[i] != 0 else 1
    pic = plot_slide(tmp_path / "s.png", "s1", s.coords, seg, PS)
    img = Image.open(pic.path)
    x, y = s.coords[i] + PS / 2
    assert np.abs(rgb_at(img, *pic.pixel_of(x, y)) - expected(segment_color(int(seg[i])))).max() <= 2
    x2, y2 = s.coords[i + 1] + PS / 2
    assert np.abs(rgb_at(img, *pic.pixel_of(x2, y2)) - expected(segment_color(int(seg[i + 1])))).max() <= 2


def test_thumbnail_underneath(tmp_path):
    s = blocky_slide(nx=6, ny=4, x_off=PS * 2, y_off=PS)
    slides = tmp_path / "slides"
    slides.mkdir()
    W0, H0 = PS * 10, PS * 8
    Image.new("RGB", (W0 // 8, H0 // 8), (200, 30, 30)).resize((W0, H0)).save(slides / "s1.png")
    files = find_slide_files(slides)
    assert set(files) == {"s1"}
    thumb = read_thumbnail(files["s1"], max_px=256)
    assert thumb[1] == (W0, H0) and thumb[0].shape[2] == 3
    pic = plot_slide(tmp_path / "t.png", "s1", s.coords, s.segment_ids, PS, thumbnail=thumb)
    img = Image.open(pic.path)
    assert pic.view == (0.0, W0, 0.0, H0)
    # slide area without patches shows the thumbnail colour
    assert np.abs(rgb_at(img, *pic.pixel_of(PS / 2, H0 - PS / 2)) - [200, 30, 30]).max() <= 3
    # a patch blends its segment colour 50/50 with the tissue
    x, y = s.coords[0] + PS / 2
    k = int(s.segment_ids[0])
    want = 0.5 * expected(segment_color(k)) + 0.5 * np.array([200, 30, 30])
    assert np.abs(rgb_at(img, *pic.pixel_of(x, y)) - want).max() <= 3


@pytest.mark.skipif(not REAL_SLIDE.exists(), reason="real slide not available")
def test_real_slide_thumbnail():
    rgb, dims = read_thumbnail(REAL_SLIDE, max_px=512)
    assert dims == (2220, 2967) and max(rgb.shape[:2]) == 512 and rgb.dtype == np.uint8


def test_cohort_histograms(tmp_path):
    rng = np.random.default_rng(0)
    p = plot_cohort(tmp_path / "h.png", sizes=rng.integers(1, 500, 200), areas_px=rng.uniform(1e4, 1e7, 200),
                    areas_um2=np.full(200, np.nan), coverage=rng.uniform(0, 1, 30),
                    segments_per_slide=rng.integers(0, 40, 30), title="cohort")
    img = Image.open(p)
    assert img.size == (1400, 1000)
    px = np.asarray(img.convert("RGB")).reshape(-1, 3)
    assert (np.abs(px - [0x3B, 0x75, 0xAF]).max(1) <= 2).sum() > 5000  # histogram bars drawn


def test_plot_store_caps_slides_and_writes_pngs(tmp_path):
    path = make_store(tmp_path / "c.zarr", [blocky_slide("a"), blocky_slide("b", nx=8, ny=30)])
    res = plot_store(open_store(path), tmp_path / "pics", max_slides=1)
    names = sorted(p.name for p in res.files)
    assert names == ["cohort_histograms.png", "slide_a.png"]
    assert all(p.stat().st_size > 10_000 for p in res.files)
    assert any("drew 1 of 2" in n for n in res.notes)
    res = plot_store(open_store(path), tmp_path / "pics2", slide_ids=["b"], slides_dir=tmp_path)
    assert sorted(p.name for p in res.files) == ["cohort_histograms.png", "slide_b.png"]
    assert any("no slide file" in n for n in res.notes)
    w, h = Image.open(tmp_path / "pics2" / "slide_b.png").size
    assert h > w  # tall slide: tall picture

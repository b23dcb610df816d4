"""samtrain heatmap: pixels at known positions show the colours of the scores the test put there."""
import json
import os

import matplotlib
import numpy as np
import pytest
import zarr
from PIL import Image

from clam2sam.errors import UsageError
from clam2sam.ids import slide_key
from trainer.cli.main import main
from trainer.heatmap import find_slide_file, normalise_values, outline_mask, render_heatmap, run_heatmaps

from .predict_helpers import small_run, small_store

SLIDE = "/work/shared/data/cmu_small_region.svs"
JET = matplotlib.colormaps["jet"]


def rgb_of(v, alpha=1.0, bg=255.0):
    return alpha * np.array(JET(v)[:3]) * 255 + (1 - alpha) * bg


def grid(nx=6, ny=4, ps=100, x0=1000, y0=500):
    xs, ys = np.meshgrid(np.arange(nx), np.arange(ny), indexing="xy")
    return np.stack([x0 + xs.ravel() * ps, y0 + ys.ravel() * ps], 1)


def test_patch_colours_at_known_pixels():
    coords = grid()
    vals = np.zeros(len(coords))
    hot = (coords[:, 0] >= 1300) & (coords[:, 1] < 700)       # top-right 3 x 2 block
    vals[hot] = 1.0
    img, g = render_heatmap(coords, vals, 100, norm="none", alpha=1.0, max_size=600)
    assert g.scale == pytest.approx(1.0) and g.canvas == (600, 400)
    px = np.asarray(img).astype(float)
    for (x, y), v in zip(coords, vals):
        c, r = g.to_pixel(x + 50, y + 50)                     # patch centre
        assert np.abs(px[r, c] - rgb_of(v)).max() <= 1.0, (x, y, v)
    # outside the patches (no slide: the canvas is the patches' bounding box): the margin is white
    assert (px[g.offset[1] - 5, g.offset[0] + 10] == 255).all()
    # the colour bar: top = high, bottom = low
    bar_x = g.offset[0] + g.canvas[0] + 16 + 9
    assert np.abs(px[g.offset[1] + 1, bar_x] - rgb_of(1.0)).max() <= 2
    assert np.abs(px[g.offset[1] + 398, bar_x] - rgb_of(0.0)).max() <= 2


def test_scale_alpha_and_percentile():
    coords = grid(nx=8, ny=2, ps=256, x0=0, y0=0)
    vals = np.arange(16) * 1e-4                                # tiny attention values: percentile spreads them
    img, g = render_heatmap(coords, vals, 256, norm="percentile", alpha=0.5, max_size=512)
    assert g.scale == pytest.approx(0.25)
    px = np.asarray(img).astype(float)
    for i in (0, 7, 15):
        c, r = g.to_pixel(*(coords[i] + 128))
        assert np.abs(px[r, c] - rgb_of(i / 15, alpha=0.5)).max() <= 1.0
    assert np.allclose(normalise_values(np.array([3.0, 1.0, 1.0, 2.0]), "percentile"), [1.0, 1 / 6, 1 / 6, 2 / 3])
    assert np.allclose(normalise_values(np.array([2.0, 4.0]), "minmax"), [0.0, 1.0])


def test_segment_outlines_between_segments():
    coords = grid(nx=4, ny=2, ps=100, x0=0, y0=0)
    seg = np.where(coords[:, 0] < 200, 0, 1)                  # left half segment 0, right half segment 1
    img, g = render_heatmap(coords, np.zeros(8), 100, segment_ids=seg, norm="none", alpha=1.0, max_size=400)
    px = np.asarray(img).astype(int)
    c, r = g.to_pixel(200, 150)                               # on the boundary between the two segments
    assert (px[r, c] == 0).all()
    c, r = g.to_pixel(150, 150)                               # inside segment 0, between two of its patches
    assert np.abs(px[r, c] - rgb_of(0.0)).max() <= 1
    lab = np.array([[0, 0, -1], [0, 1, 1]])
    assert outline_mask(lab).tolist() == [[False, False, True], [False, True, True]]


def test_thumbnail_background_and_slide_lookup(tmp_path):
    os.symlink(SLIDE, tmp_path / "slide_a.svs")
    assert find_slide_file(tmp_path, "slide_a") == tmp_path / "slide_a.svs"
    assert find_slide_file(tmp_path, "slide_b") is None
    import openslide

    with openslide.OpenSlide(SLIDE) as s:
        dims = s.dimensions                                   # (2220, 2967)
        thumb = s.get_thumbnail((300, 400))
    coords = np.array([[0, 0], [512, 0]])
    img, g = render_heatmap(coords, np.array([0.0, 1.0]), 512, thumbnail=thumb, slide_dims=dims, norm="none",
                            alpha=1.0, max_size=400)
    assert g.origin == (0.0, 0.0) and g.canvas[1] == 400
    px = np.asarray(img).astype(float)
    bg = np.asarray(thumb.convert("RGB").resize(g.canvas)).astype(float)
    c, r = g.to_pixel(1500, 2500)                             # far from the patches: the slide shows
    assert np.abs(px[r, c] - bg[r - g.offset[1], c - g.offset[0]]).max() <= 1
    assert not (px[r, c] == 255).all()
    c, r = g.to_pixel(768, 256)
    assert np.abs(px[r, c] - rgb_of(1.0)).max() <= 1


# --------------------------------------------------------------------------------- end to end (CLI)

@pytest.fixture(scope="module")
def pred_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hm")
    store = small_store(d / "c.zarr")
    run = small_run(store, d / "run", model="max", group_features=False)
    with pytest.raises(SystemExit) as e:
        main(["predict", str(run), str(store), "--out", str(d / "pred"), "--patch-probs", "-q"])
    assert e.value.code == 0
    return d


def test_cli_heatmap_colours_follow_scores(pred_dir, tmp_path):
    # plant known scores: one hot patch per slide
    root = zarr.open_group(str(pred_dir / "pred" / "scores.zarr"), mode="r+")
    g = root["slides"][slide_key("slide_002")]
    s = np.zeros(g["scores"].shape, np.float32)
    s[7] = 5.0
    g["scores"][...] = s
    with pytest.raises(SystemExit) as e:
        main(["heatmap", str(pred_dir / "pred"), "--out", str(tmp_path / "m"), "--alpha", "1", "--no-outlines",
              "--max-size", "400", "-q"])
    assert e.value.code == 0
    n = len(list(root["slides"].group_keys()))
    assert len(list((tmp_path / "m").glob("*.png"))) == n
    geo = json.loads((tmp_path / "m" / "heatmaps.json").read_text())["slide_002"]
    px = np.asarray(Image.open(tmp_path / "m" / geo["png"]).convert("RGB")).astype(float)
    coords, ps = g["coords"][...], float(g.attrs["patch_size_level0"])
    from trainer.heatmap import Geometry

    G = Geometry(tuple(geo["origin"]), geo["scale"], tuple(geo["canvas"]), tuple(geo["offset"]))
    for i in (7, 0, len(s) - 1):
        c, r = G.to_pixel(*(coords[i] + ps / 2))
        want = 1.0 if i == 7 else (len(s) - 2) / (len(s) - 1) / 2   # percentile: ties of 0 share the mean rank
        assert np.abs(px[r, c] - rgb_of(want)).max() <= 1.0, i


def test_heatmap_probability_and_errors(pred_dir, tmp_path):
    paths = run_heatmaps(pred_dir / "pred", tmp_path / "p", value="probability", slides=["slide_001"], quiet=True)
    assert [p.name for p in paths] == ["slide_001.png"]
    img = Image.open(paths[0])
    assert img.format == "PNG" and img.size[0] > 1024
    with pytest.raises(UsageError, match="no --store"):
        run_heatmaps(pred_dir / "run", tmp_path / "q", quiet=True)
    # a run + --store: predicts first (no patch probabilities needed for attention)
    paths = run_heatmaps(pred_dir / "run", tmp_path / "r", store=str(pred_dir / "c.zarr"), slides=["slide_004"],
                         quiet=True)
    assert [p.name for p in paths] == ["slide_004.png"]

"""End to end: slide -> tissue region -> SAM (tiny random model) -> masks -> membership -> store."""
import dataclasses
import pickle
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from clam2sam.sam import cache as sam_cache

from clam2sam.sam import segment_pass as sam_pass
from clam2sam.cli.main import cli
from clam2sam.convert.cohort import ConvertOptions, convert_cohort
from clam2sam.errors import SamError, UsageError
from clam2sam.convert.membership import assign_membership
from clam2sam.sam.segment_pass import SamConfig, SamParams, SamProvider
from clam2sam.store.writer import open_store

from tests.clam2sam._sam_fixtures import (CMU_SLIDE, FAST, FAST_FLAGS, REF, cmu_coords, grid_coords,
                                               synthetic_rgb, tiny_checkpoint, write_clam_slide,
                                               write_pyramid_tiff)

PYR_COORDS = grid_coords(256, 384, 1800, 1700)  # a tissue block inside a 2048^2 slide


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("sam")
    ckpt = tiny_checkpoint(d / "tiny.pth")
    slides = d / "slides"
    slides.mkdir()
    (slides / "cmu_small_region.svs").symlink_to(CMU_SLIDE)
    write_pyramid_tiff(slides / "pyr.tif", synthetic_rgb(2048, seed=5), n_levels=3)
    archive = d / "archive"
    for sub in ("h5_files", "pt_files", "patches"):
        (archive / sub).mkdir(parents=True)
        ext = "pt" if sub == "pt_files" else "h5"
        (archive / sub / f"cmu_small_region.{ext}").symlink_to(REF / "clam" / sub / f"cmu_small_region.{ext}")
    feats = write_clam_slide(archive, "pyr", PYR_COORDS, dim=1024)
    return {"dir": d, "ckpt": ckpt, "slides": slides, "archive": archive, "pyr_feats": feats}


def _provider(env, cache=None, **kw) -> SamProvider:
    cfg = SamConfig(model_type="tiny", checkpoint=str(env["ckpt"]), device="cpu", params=kw.pop("params", FAST),
                    slides_dir=str(env["slides"]), cache_dir=None if cache is None else str(cache), verbose=False, **kw)
    return SamProvider(cfg)


def _drawn_at_level0(ms, coords, ps):
    """Independent check: masks upsampled to level 0 (np.repeat by D), looked up at each patch centre."""
    g = ms.geometry
    D = g.total_downsample
    cx = coords[:, 0] + ps // 2 - g.start_x
    cy = coords[:, 1] + ps // 2 - g.start_y
    hits = np.zeros((ms.n_masks, len(coords)), bool)
    for m in range(ms.n_masks):
        big = np.repeat(np.repeat(ms.masks[m], D, axis=0), D, axis=1)  # (H*D, W*D) level-0 raster
        ok = (cx >= 0) & (cy >= 0) & (cx < big.shape[1]) & (cy < big.shape[0])
        hits[m, ok] = big[cy[ok], cx[ok]]
    return hits


@pytest.fixture(scope="module")
def cmu_run(env):
    return _provider(env)("cmu_small_region", cmu_coords(), 128, None)


@pytest.fixture(scope="module")
def pyr_run(env):
    return _provider(env)("pyr", PYR_COORDS, 128, env["slides"] / "pyr.tif")


def test_cmu_geometry_masks_and_provenance(env, cmu_run):
    ms = cmu_run
    g = ms.geometry
    assert (g.vis_level, g.downsample_ratio, g.total_downsample) == (0, 4, 4)  # as SAM-MIL's pickle
    assert (g.start_x, g.start_y, g.width, g.height) == (64, 70, 480, 724)
    assert ms.masks.shape == (ms.n_masks, 724, 480) and ms.n_masks == 12  # 4 points x 3 masks, none dropped
    assert ms.areas.tolist() == ms.masks.sum((1, 2)).tolist()
    ys, xs = np.nonzero(ms.masks[0])
    assert ms.bboxes[0].tolist() == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
    p = ms.provenance
    assert p["model_type"] == "tiny" and p["source"] == "sam-pass" and p["cached"] is False
    assert p["checkpoint_sha256"] == sam_cache.hashlib.sha256(env["ckpt"].read_bytes()).hexdigest()
    assert p["params"] == dataclasses.asdict(FAST) and p["seed"] == 0 and p["tissue_source"] == "coords"
    assert p["versions"]["torchvision"] == "stand-in" and p["versions"]["segment-anything"] == "1.0"
    assert p["seconds"]["model"] > 0 and p["seconds"]["generate"] >= p["seconds"]["model"]
    assert p["n_model_calls"] == 2  # one image embedding + one batch of 4 points
    assert {"predicted_iou", "stability_score", "point_coords", "crop_box"} <= set(ms.records[0])


def test_pyramid_tiff_uses_level_1(pyr_run):
    g = pyr_run.geometry
    # patches x 256..1792(+128), y 384..1664(+128): 1664 x 1408 -> D = 2 -> level 1 (ds 2), no resize
    assert (g.vis_level, g.downsample_ratio, g.total_downsample, g.level_downsample) == (1, 1, 2, 2.0)
    assert (g.width, g.height) == (832, 704) and pyr_run.masks.shape[1:] == (704, 832)


@pytest.mark.parametrize("which", ["cmu", "pyr"])
def test_membership_agrees_with_masks_drawn_at_level0(which, cmu_run, pyr_run):
    ms, coords = (cmu_run, cmu_coords()) if which == "cmu" else (pyr_run, PYR_COORDS)
    memb = assign_membership(coords, 128, ms, "smallest-centre")
    hits = _drawn_at_level0(ms, coords, 128)              # (M, N)
    areas = np.where(hits, ms.areas[:, None], np.iinfo(np.int64).max)
    expect = np.where(hits.any(0), areas.argmin(0), -1)   # smallest covering mask (lowest index on ties)
    got = np.where(memb.segment_ids >= 0, memb.segment_source_index[np.maximum(memb.segment_ids, 0)], -1)
    assert np.array_equal(got, expect)
    assert (got >= 0).sum() > len(coords) // 2  # the check is not vacuous


def test_deterministic_for_a_fixed_seed(env, cmu_run):
    again = _provider(env)("cmu_small_region", cmu_coords(), 128, None)
    assert np.array_equal(again.masks, cmu_run.masks)
    assert again.records == cmu_run.records and np.array_equal(again.bboxes, cmu_run.bboxes)


def test_sam_mil_default_crop_layer_runs(env):
    params = SamParams(points_per_side=2, pred_iou_thresh=0, stability_score_thresh=0, crop_n_layers=1)
    ms = _provider(env, params=params)("pyr", PYR_COORDS, 128, None)
    assert ms.provenance["n_model_calls"] >= 10  # 5 crops: one embedding + one batch each
    assert ms.n_masks >= 1
    for r in ms.records:
        x, y, w, h = r["crop_box"]
        assert 0 <= x and 0 <= y and x + w <= 832 and y + h <= 704


def test_resume_reuses_the_cache_without_the_model(env, cmu_run, tmp_path, monkeypatch):
    prov = _provider(env, cache=tmp_path / "cache")
    first = prov("cmu_small_region", cmu_coords(), 128, None)
    assert np.array_equal(first.masks, cmu_run.masks)
    calls = []
    real = sam_pass.generate_masks
    monkeypatch.setattr(sam_pass, "generate_masks", lambda *a, **k: calls.append(1) or real(*a, **k))
    def no_model(*a, **k):
        calls.append("load")
        raise RuntimeError("model loaded")

    monkeypatch.setattr(sam_pass, "load_sam", no_model)
    second = prov("cmu_small_region", cmu_coords(), 128, None)
    assert calls == [] and second.provenance["cached"] is True
    assert np.array_equal(second.masks, first.masks) and second.records == first.records
    assert second.geometry == first.geometry and np.array_equal(second.bboxes, first.bboxes)
    assert [s["cached"] for s in prov.stats] == [False, True]
    # other parameters or seed -> the entry does not match: SAM must run again
    for changed in ({"params": dataclasses.replace(FAST, box_nms_thresh=0.7)}, {"seed": 1}):
        with pytest.raises(RuntimeError, match="model loaded"):
            _provider(env, cache=tmp_path / "cache", **changed)("cmu_small_region", cmu_coords(), 128, None)
    assert calls == ["load", "load"]


def test_full_convert_into_the_store(env, tmp_path, monkeypatch):
    out = tmp_path / "c.zarr"
    prov = _provider(env).with_cache_dir(out / "sam_cache")
    rep = convert_cohort(ConvertOptions(archive=env["archive"], out=out, slides_dir=env["slides"]),
                         segment_provider=prov)
    assert rep.return_code == 0 and rep.counts()["converted"] == 2, rep.to_dict()
    r = open_store(out)
    assert r.slide_ids() == ["cmu_small_region", "pyr"]
    s = r.read_slide("pyr")
    sam = s.attrs["sam"]
    assert sam["model_type"] == "tiny" and sam["geometry"]["vis_level"] == 1 and sam["n_masks"] == 12
    em, geom, _ = sam_cache.read_cache(out / "sam_cache", "pyr")
    ms = em.to_maskset(geom)
    memb = assign_membership(PYR_COORDS, 128, ms, "smallest-centre")
    assert np.array_equal(s.segment_ids, memb.segment_ids)
    assert np.array_equal(s.segment_sam_area, ms.areas[s.segment_source_index])
    assert np.allclose(s.segment_areas, s.segment_sam_area * 4.0)  # D = 2: one SAM pixel = 4 level-0 px
    for k in range(s.n_segments):
        rows = s.member_indices[s.member_indptr[k]:s.member_indptr[k + 1]]
        assert np.array_equal(rows, np.flatnonzero(s.segment_ids == k))
        if rows.size:
            assert np.allclose(s.group_features[k], env["pyr_feats"][rows].mean(0), atol=1e-6)
    # re-convert with --overwrite (another membership rule): the cache survives, SAM does not run again
    def no_sam(*a, **k):
        raise RuntimeError("SAM ran again")

    monkeypatch.setattr(sam_pass, "generate_masks", no_sam)
    rep = convert_cohort(ConvertOptions(archive=env["archive"], out=out, slides_dir=env["slides"],
                                        membership="reference", overwrite=True), segment_provider=prov)
    assert rep.counts()["converted"] == 2
    assert open_store(out).read_slide("pyr").attrs["sam"]["cached"] is True


def test_cli_convert_export_and_convert_back(env, tmp_path):
    run = CliRunner().invoke
    out = tmp_path / "c.zarr"
    args = ["convert", str(env["archive"]), "--slides-dir", str(env["slides"]), "--sam-checkpoint",
            str(env["ckpt"]), *FAST_FLAGS, "--membership", "reference", "--out", str(out), "-q"]
    res = run(cli, args)
    assert res.exit_code == 0, res.output
    assert sorted(sam_cache.list_cached(out / "sam_cache")) == ["cmu_small_region", "pyr"]
    res = run(cli, ["export-segments", str(out), "--out", str(tmp_path / "segments")])
    assert res.exit_code == 0, res.output
    back = tmp_path / "back.zarr"
    res = run(cli, ["convert", str(env["archive"]), "--slides-dir", str(env["slides"]), "--segments-dir",
                    str(tmp_path / "segments"), "--membership", "reference", "--out", str(back), "-q"])
    assert res.exit_code == 0, res.output
    a, b = open_store(out), open_store(back)
    for sid in ("cmu_small_region", "pyr"):
        x, y = a.read_slide(sid), b.read_slide(sid)
        for name in ("segment_ids", "patch_sam_area", "member_indptr", "member_indices", "segment_source_index"):
            assert np.array_equal(getattr(x, name), getattr(y, name)), (sid, name)
        assert np.allclose(x.group_features, y.group_features)
        assert x.attrs["sam"]["geometry"] == y.attrs["sam"]["geometry"]


@pytest.mark.parametrize("extra,message", [
    (["--sam-checkpoint", "MISSING"], "SAM checkpoint not found"),
    (["--sam-checkpoint", "CKPT", "--sam-model", "vit_b"], "checkpoint is tiny, not vit_b -- pass --sam-model tiny"),
    (["--points-per-side", "8"], "--points-per-side only apply to the SAM pass"),
    (["--sam-checkpoint", "CKPT", "--sam-model", "tiny", "--segments-dir", "ARCHIVE"], "both --segments-dir"),
    (["--sam-checkpoint", "CKPT", "--sam-model", "vit_x"], "'vit_x' is not one of vit_h, vit_l, vit_b"),
])
def test_cli_usage_errors(env, tmp_path, extra, message):
    extra = [str(env["ckpt"]) if e == "CKPT" else str(tmp_path / "none.pth") if e == "MISSING"
             else str(env["archive"]) if e == "ARCHIVE" else e for e in extra]
    args = ["convert", str(env["archive"]), "--slides-dir", str(env["slides"]), "--out", str(tmp_path / "o"), *extra]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code != 0
    text = res.output + str(res.exception or "")
    assert message in " ".join(text.split()), text
    if isinstance(res.exception, UsageError):
        assert res.exception.fix


def test_cli_needs_slides_dir(env, tmp_path):
    res = CliRunner().invoke(cli, ["convert", str(env["archive"]), "--sam-checkpoint", str(env["ckpt"]),
                                   "--sam-model", "tiny", "--out", str(tmp_path / "o")])
    assert isinstance(res.exception, UsageError) and "--slides-dir" in str(res.exception)


def test_bad_slides_are_clear_per_slide_errors(env, tmp_path):
    prov = _provider(env)
    with pytest.raises(SamError, match="slide 'ghost'.*no slide file for this feature file"):
        prov("ghost", cmu_coords(), 128, None)
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"not a slide at all" * 100)
    with pytest.raises(SamError, match="slide 'bad'.*OpenSlide cannot read this slide"):
        prov("bad", cmu_coords(), 128, bad)
    with pytest.raises(SamError, match=r"slide 'pyr'.*slide is 2048x2048 px at level 0: the slide does not match"):
        prov("pyr", cmu_coords() * 2, 128, env["slides"] / "pyr.tif")  # coords of a bigger slide
    with pytest.raises(SamError, match="patch size at level 0 is unknown"):
        prov("pyr", PYR_COORDS, None, None)
    # through convert: recorded per slide, the others still converted
    arch = tmp_path / "arch"
    shutil.copytree(env["archive"], arch, symlinks=True)
    write_clam_slide(arch, "ghost", PYR_COORDS, dim=1024)
    out = tmp_path / "c.zarr"
    rep = convert_cohort(ConvertOptions(archive=arch, out=out, slides_dir=env["slides"], skip_errors=True),
                         segment_provider=prov.with_cache_dir(out / "sam_cache"))
    assert rep.counts() == {"converted": 2, "skipped": 0, "failed": 1} and rep.return_code == 1
    assert "no slide file" in rep.by_status("failed")[0].reason


def test_provider_is_picklable_and_spreads_gpus(env, monkeypatch):
    prov = _provider(env)
    prov.stats.append({"x": 1})
    clone = pickle.loads(pickle.dumps(prov))  # our own in-memory object (sent to worker processes), not input
    assert clone.config == prov.config and clone.stats == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(sam_pass, "_worker_index", lambda: 3)
    assert sam_pass.process_device("auto") == "cuda:1" and sam_pass.process_device("cpu") == "cpu"


def test_min_mask_region_area_needs_opencv():
    try:
        import cv2  # noqa: F401
        pytest.skip("OpenCV installed")
    except ImportError:
        pass
    with pytest.raises(UsageError, match="needs OpenCV"):
        SamParams(min_mask_region_area=10).validate()


def test_tissue_region_from_clam_contours(env, tmp_path):
    cdir = tmp_path / "heatmaps" / "code" / "label"
    cdir.mkdir(parents=True)
    contour = np.array([[[64, 70]], [[1996, 70]], [[1996, 2966]], [[64, 2966]]], np.int32)
    (cdir / "cmu_small_region_mask.pkl").write_bytes(pickle.dumps({"tissue": [contour], "holes": [[]]}))
    prov = _provider(env, contours_dir=str(tmp_path / "heatmaps"))
    ms = prov("cmu_small_region", cmu_coords(), 128, None)
    assert ms.provenance["tissue_source"] == "contours"
    assert (ms.geometry.width, ms.geometry.height, ms.geometry.stop_x) == (483, 724, 1996)  # SAM-MIL's pickle


@pytest.mark.slow
def test_workers_run_sam_in_a_process_pool(env, tmp_path):
    out = tmp_path / "c.zarr"
    prov = _provider(env).with_cache_dir(out / "sam_cache")
    rep = convert_cohort(ConvertOptions(archive=env["archive"], out=out, slides_dir=env["slides"], workers=2),
                         segment_provider=prov)
    assert rep.counts()["converted"] == 2, rep.to_dict()
    assert sorted(sam_cache.list_cached(out / "sam_cache")) == ["cmu_small_region", "pyr"]


def test_no_mask_at_all_is_an_empty_result(env):
    from clam2sam.sam.model import load_sam

    loaded = load_sam("tiny", env["ckpt"], "cpu")
    img = np.random.default_rng(0).integers(0, 255, (96, 64, 3), dtype=np.uint8)
    params = SamParams(points_per_side=2, pred_iou_thresh=2.0, crop_n_layers=1)  # nothing passes
    em, timing = sam_pass.generate_masks(loaded, img, params)
    assert em.n_masks == 0 and timing["n_model_calls"] == 10
    ms = em.to_maskset(sam_pass.slide_io.plan_geometry(sam_pass.slide_io.TissueBox(0, 0, 64, 96, "coords"),
                                                       [(64, 96)]))
    assert ms.masks.shape == (0, 96, 64)
    assert assign_membership(np.zeros((3, 2), np.int64), 16, ms).segment_ids.tolist() == [-1, -1, -1]

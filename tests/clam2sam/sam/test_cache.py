import json

import numpy as np
import pytest
import torch

from clam2sam.sam import cache as sc
from clam2sam.errors import StoreError
from clam2sam.masks import SamGeometry
from clam2sam.store.writer import SlideArrays, StoreWriter, open_store
from clam2sam.sam.tv_standin import import_segment_anything

GEOM = SamGeometry(start_x=64, start_y=70, total_downsample=4, width=60, height=40, vis_level=0,
                   downsample_ratio=4, level_downsample=1.0, stop_x=304, stop_y=230)


def _smooth_masks(m=5, h=40, w=60, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((m, h, w), bool)
    for i in range(m):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(5, 20)
        out[i] = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
    out[0, 0, 0] = True  # a mask starting with foreground
    return out


def _records(masks: np.ndarray, crop_float=False) -> list[dict]:
    recs = []
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m) if m.any() else (np.array([0]), np.array([0]))
        crop = [0.0, 0.0, float(m.shape[1]), float(m.shape[0])] if crop_float else [0, 0, m.shape[1], m.shape[0]]
        recs.append({"segmentation": m, "area": int(m.sum()),
                     "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())],
                     "predicted_iou": 0.5 + i / 100, "point_coords": [[1.5 * i, 2.25]], "stability_score": 0.9,
                     "crop_box": crop})
    return recs


def test_rle_matches_segment_anything():
    import_segment_anything()
    from segment_anything.utils.amg import mask_to_rle_pytorch, rle_to_mask

    rng = np.random.default_rng(0)
    masks = np.concatenate([_smooth_masks(), rng.random((3, 40, 60)) > 0.5,
                            np.zeros((1, 40, 60), bool), np.ones((1, 40, 60), bool)])
    sam_rles = mask_to_rle_pytorch(torch.from_numpy(masks))
    for m, rle in zip(masks, sam_rles):
        ours = sc.rle_encode(m)
        assert ours.tolist() == list(rle["counts"])
        assert np.array_equal(sc.rle_decode(ours, 40, 60), m)
        assert np.array_equal(sc.rle_decode(np.asarray(rle["counts"]), 40, 60), rle_to_mask(rle))
    with pytest.raises(ValueError, match="RLE covers"):
        sc.rle_decode(np.array([5, 5]), 40, 60)


def test_encoding_choice_and_roundtrip():
    smooth = _smooth_masks()
    em = sc.from_sam_records(_records(smooth), 40, 60)
    assert em.encoding == "rle" and em.compacted().encoding == "rle"
    assert np.array_equal(em.dense(), smooth)
    noisy = np.random.default_rng(1).random((4, 40, 60)) > 0.5
    en = sc.from_sam_records(_records(noisy), 40, 60).compacted()
    assert en.encoding == "packbits" and en.data.dtype == np.uint8
    assert np.array_equal(en.dense(), noisy)
    assert en.data.size == 4 * 40 * 60 // 8


def test_write_read_roundtrip(tmp_path):
    masks = _smooth_masks(7)
    em = sc.from_sam_records(_records(masks, crop_float=True), 40, 60)
    prov = {"model_type": "tiny", "params": {"points_per_side": 2}}
    path = sc.write_cache(tmp_path, "s/1", em, geometry=GEOM, provenance=prov, key="k1", patch_size=128)
    assert path.name == "s%2F1" and not path.with_name(path.name + ".tmp").exists()
    got, geom, attrs = sc.read_cache(tmp_path, "s/1")
    assert geom == GEOM and attrs["provenance"] == prov and attrs["patch_size"] == 128
    assert np.array_equal(got.dense(), masks)
    for name in ("areas", "bboxes", "predicted_iou", "stability_score", "point_coords", "crop_boxes"):
        assert np.array_equal(getattr(got, name), getattr(em, name)), name
    assert got.records() == em.records()
    assert got.records()[0]["crop_box"] == [0.0, 0.0, 60.0, 40.0]  # floats kept as floats
    ms = got.to_maskset(geom, {"x": 1})
    assert ms.masks.shape == (7, 40, 60) and ms.areas.tolist() == masks.sum((1, 2)).tolist()
    assert ms.records[3]["point_coords"] == [[4.5, 2.25]]
    assert sc.list_cached(tmp_path) == ["s/1"]


def test_lookup_needs_same_key_and_complete(tmp_path):
    em = sc.from_sam_records(_records(_smooth_masks()), 40, 60)
    sc.write_cache(tmp_path, "a", em, geometry=GEOM, provenance={}, key="k1")
    assert sc.lookup(tmp_path, "a", "k1") is not None
    assert sc.lookup(tmp_path, "a", "k2") is None
    assert sc.lookup(None, "a", "k1") is None
    zj = tmp_path / "a" / "zarr.json"
    meta = json.loads(zj.read_text())
    meta["attributes"].pop("complete")  # an interrupted write
    zj.write_text(json.dumps(meta))
    assert sc.lookup(tmp_path, "a", "k1") is None and sc.list_cached(tmp_path) == []
    with pytest.raises(StoreError, match="no complete SAM cache entry"):
        sc.read_cache(tmp_path, "a")


def test_corrupt_entry_is_a_clear_error(tmp_path):
    em = sc.from_sam_records(_records(_smooth_masks()), 40, 60)
    g = sc.write_cache(tmp_path, "a", em, geometry=GEOM, provenance={}, key="k")
    for f in (g / "mask_data" / "c").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(StoreError, match="SAM cache entry is unreadable.*delete this folder"):
        sc.read_cache(tmp_path, "a")


def test_cache_is_much_smaller_than_dense_masks(tmp_path):
    h, w = 724, 480
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    masks = np.stack([(xx - rng.uniform(0, w)) ** 2 + (yy - rng.uniform(0, h)) ** 2 < rng.uniform(30, 200) ** 2
                      for _ in range(20)])
    em = sc.from_sam_records(_records(masks), h, w)
    g = sc.write_cache(tmp_path, "big", em, geometry=GEOM, provenance={}, key="k")
    on_disk = sc.disk_bytes(g)
    assert em.dense_bytes == 20 * h * w
    assert on_disk * 50 < em.dense_bytes, (on_disk, em.dense_bytes)


def test_cache_beside_slide_groups_keeps_the_store_valid(tmp_path):
    store = tmp_path / "c.zarr"
    f = np.zeros((3, 4), np.float32)
    with StoreWriter(store) as w:
        w.write_slide(SlideArrays.from_partition("s1", f, np.zeros((3, 2)), np.array([0, 0, -1])))
        em = sc.from_sam_records(_records(_smooth_masks()), 40, 60)
        sc.write_cache(sc.default_cache_dir(store), "s1", em, geometry=GEOM, provenance={}, key="k")
        w.finalize()
    r = open_store(store)
    assert r.slide_ids() == ["s1"]
    assert "sam_cache" not in json.dumps(json.loads((store / "zarr.json").read_text()).get("consolidated_metadata"))
    assert sc.list_cached(store / "sam_cache") == ["s1"]


def test_overwrite_keeps_the_cache(tmp_path):
    store = tmp_path / "c.zarr"
    f = np.zeros((3, 4), np.float32)
    with StoreWriter(store) as w:
        w.write_slide(SlideArrays.from_partition("s1", f, np.zeros((3, 2)), np.array([0, 0, -1])))
        sc.write_cache(sc.default_cache_dir(store), "s1", sc.from_sam_records(_records(_smooth_masks()), 40, 60),
                       geometry=GEOM, provenance={}, key="k")
        w.finalize()
    with StoreWriter(store, overwrite=True) as w:
        w.finalize()
    assert open_store(store).slide_ids() == []          # slides gone
    assert sc.lookup(store / "sam_cache", "s1", "k")    # SAM results kept

import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from clam2sam.sam import tv_standin as tv


def _greedy_reference(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """Plain-Python greedy NMS (float64), unique scores assumed."""
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        rest = []
        for j in order:
            xx1, yy1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            xx2, yy2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(0.0, xx2 - xx1) * max(0.0, yy2 - yy1)
            a = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            b = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            if not inter / (a + b - inter) > thr:
                rest.append(j)
        order = rest
    return keep


def _random_boxes(rng, n, scale=100.0):
    xy = rng.uniform(0, scale, size=(n, 2))
    wh = rng.uniform(1, scale / 2, size=(n, 2))
    return np.concatenate([xy, xy + wh], 1)  # (n, 4) XYXY


def test_segment_anything_imports_without_torchvision():
    assert tv.ensure_torchvision() == "stand-in"  # no torchvision in this environment
    assert getattr(sys.modules["torchvision"], "__clam2sam_standin__", False)
    sa = tv.import_segment_anything()
    from torchvision.ops.boxes import batched_nms
    from segment_anything.automatic_mask_generator import batched_nms as sam_nms

    assert sam_nms is batched_nms is tv.batched_nms
    assert hasattr(sa, "SamAutomaticMaskGenerator") and tv.ensure_torchvision() == "stand-in"  # idempotent


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("thr", [0.3, 0.7])
def test_nms_matches_a_plain_greedy_implementation(seed, thr):
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, 60).astype(np.float32)
    scores = rng.permutation(60).astype(np.float32) / 60  # unique
    got = tv.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).tolist()
    assert got == _greedy_reference(boxes.astype(np.float64), scores, thr)
    assert got == sorted(got, key=lambda i: -scores[i])  # decreasing score order


def test_nms_threshold_is_strict_and_empty_input():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=torch.float32)  # IoU exactly 0.5
    scores = torch.tensor([0.9, 0.8])
    assert tv.nms(boxes, scores, 0.5).tolist() == [0, 1]   # 0.5 is not > 0.5
    assert tv.nms(boxes, scores, 0.49).tolist() == [0]
    assert tv.nms(torch.zeros((0, 4)), torch.zeros(0), 0.5).dtype == torch.int64


def test_nms_tie_order_follows_torch_sort():
    """Tied scores are visited in the order torch's own sort gives (as torchvision's CPU kernel)."""
    rng = np.random.default_rng(1)
    boxes = torch.from_numpy(_random_boxes(rng, 3000, scale=10000).astype(np.float32))
    scores = torch.from_numpy(rng.integers(0, 3, 3000).astype(np.float32))  # many ties
    keep = tv.nms(boxes, scores, 0.99)
    order = scores.sort(0, descending=True)[1]
    kept = set(keep.tolist())
    assert keep.tolist() == [int(i) for i in order if int(i) in kept]


@pytest.mark.parametrize("n", [40, 1500])  # coordinate trick (<= 4000 numbers) and per-category loop
def test_batched_nms_never_suppresses_across_categories(n):
    rng = np.random.default_rng(n)
    boxes = _random_boxes(rng, n).astype(np.float32)
    scores = rng.permutation(n).astype(np.float32)
    idxs = rng.integers(0, 3, n)
    got = tv.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(idxs), 0.5).tolist()
    expect = []
    for c in range(3):
        members = np.flatnonzero(idxs == c)
        expect += [int(members[k]) for k in _greedy_reference(boxes[members].astype(np.float64), scores[members], 0.5)]
    assert sorted(got) == sorted(expect)
    assert got == sorted(got, key=lambda i: -scores[i])


def test_box_area_keeps_integer_and_float_types():
    b = torch.tensor([[0, 0, 4, 3], [1, 1, 2, 5]])
    assert tv.box_area(b).tolist() == [12, 4] and tv.box_area(b).dtype == torch.int64
    assert tv.box_area(b.float()).dtype == torch.float32
    assert tv.box_area(b.half()).dtype == torch.float32  # upcast like torchvision


def test_resize_and_to_pil_image_match_pil():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (30, 50, 3), dtype=np.uint8)
    pil = tv.to_pil_image(arr)
    assert pil.mode == "RGB" and np.array_equal(np.asarray(pil), arr)
    out = tv.resize(pil, (20, 33))  # (h, w)
    assert out.size == (33, 20)
    assert np.array_equal(np.asarray(out), np.asarray(Image.fromarray(arr).resize((33, 20), Image.BILINEAR)))
    assert tv.resize(pil, 15).size == (25, 15)  # int: shorter side
    assert tv.to_pil_image(arr[:, :, 0]).mode == "L"
    t = torch.from_numpy(arr).permute(2, 0, 1).float() / 255  # CHW float in [0, 1]
    assert np.abs(np.asarray(tv.to_pil_image(t)).astype(int) - arr).max() <= 1
    y = tv.resize(torch.from_numpy(arr).permute(2, 0, 1).float(), (15, 25))
    assert tuple(y.shape) == (3, 15, 25)


def test_resize_longest_side_uses_the_standin():
    sa = tv.import_segment_anything()
    from segment_anything.utils.transforms import ResizeLongestSide

    arr = np.random.default_rng(2).integers(0, 255, (40, 100, 3), dtype=np.uint8)
    out = ResizeLongestSide(64).apply_image(arr)
    assert out.shape == (26, 64, 3)
    assert np.array_equal(out, np.asarray(Image.fromarray(arr).resize((64, 26), Image.BILINEAR)))
    assert sa is not None


def test_a_working_torchvision_is_preferred(monkeypatch):
    fake = types.ModuleType("torchvision")
    fake.__version__ = "9.9.9"
    fake.__path__ = []
    ops, boxes = types.ModuleType("torchvision.ops"), types.ModuleType("torchvision.ops.boxes")
    trans, fn = types.ModuleType("torchvision.transforms"), types.ModuleType("torchvision.transforms.functional")
    ops.__path__, trans.__path__ = [], []
    boxes.batched_nms, boxes.box_area = tv.batched_nms, tv.box_area
    fn.resize, fn.to_pil_image = tv.resize, tv.to_pil_image
    for name, mod in (("torchvision", fake), ("torchvision.ops", ops), ("torchvision.ops.boxes", boxes),
                      ("torchvision.transforms", trans), ("torchvision.transforms.functional", fn)):
        monkeypatch.setitem(sys.modules, name, mod)
    assert tv.ensure_torchvision() == "torchvision 9.9.9"


def test_a_broken_torchvision_is_replaced(monkeypatch):
    broken = types.ModuleType("torchvision")  # imports, but lacks the ops (like a CUDA/CPU mismatch)
    broken.__path__ = []
    monkeypatch.setitem(sys.modules, "torchvision", broken)
    for name in ("torchvision.ops", "torchvision.ops.boxes", "torchvision.transforms",
                 "torchvision.transforms.functional"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert tv.ensure_torchvision() == "stand-in"
    from torchvision.ops.boxes import box_area

    assert box_area is tv.box_area


def test_box_area_of_no_crop_boxes_is_empty():
    """SAM builds torch.tensor([]) crop boxes when no crop yields a mask (torchvision would raise)."""
    assert tv.box_area(torch.tensor([])).shape == (0,)

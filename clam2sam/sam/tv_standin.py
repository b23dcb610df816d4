"""A pure torch/numpy/PIL stand-in for the four torchvision functions ``segment_anything`` imports.

``segment-anything`` 1.0 imports ``torchvision.ops.boxes.{batched_nms, box_area}`` and
``torchvision.transforms.functional.{resize, to_pil_image}`` at import time. torchvision is not a
dependency of this project (installing it replaces the CPU torch with a CUDA build, and PyPI's
torchvision fails to import beside the CPU torch), so :func:`ensure_torchvision` registers these
modules in ``sys.modules`` -- but only when no working torchvision can be imported. A real, working
torchvision is always preferred.

Semantics follow torchvision exactly where SAM depends on them:

* ``nms``: greedy; scores sorted with the very call torchvision's CPU kernel makes
  (``scores.sort(0, descending=True)``, torch's default -- *not* stable for large inputs), so the order of
  tied scores (SAM's cross-crop NMS scores are ``1 / crop area``: many ties) is the same as with real
  torchvision on CPU; the IoU is computed in the boxes' dtype and a box is suppressed when
  ``IoU > iou_threshold`` (compared in float64, like the C++ ``double`` threshold).
* ``batched_nms``: torchvision's two strategies with its size switch (> 4000 box coordinates on CPU:
  NMS per category, then kept indices re-sorted by score; otherwise the coordinate-offset trick).
* ``box_area``: ``(x2 - x1) * (y2 - y1)`` after torchvision's integer/float upcast.
* ``resize`` on a PIL image: ``img.resize((w, h), BILINEAR)``; ``size`` is ``(h, w)`` or the short side.
* ``to_pil_image``: HWC/HW numpy arrays or CHW tensors (float scaled by 255) to a PIL image.
"""
from __future__ import annotations

import sys
import types

import numpy as np
from clam2sam._lazy import LazyModule
torch = LazyModule("torch")  # imported on first use: keeps CLI start-up fast

STANDIN_VERSION = "0.0.0+clam2sam.standin"
_MODULES = ("torchvision", "torchvision.ops", "torchvision.ops.boxes", "torchvision.transforms",
            "torchvision.transforms.functional")


# ------------------------------------------------------------------------------------------- ops

def _upcast(t: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_upcast``: ints -> int32/int64, floats -> float32/float64 (avoid overflow)."""
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of ``(N, 4)`` XYXY boxes -> ``(N,)``.

    An empty 1-D tensor gives an empty result: SAM builds ``torch.tensor([])`` crop boxes when no crop
    yields a mask, where torchvision raises an IndexError -- a slide without any mask is not an error.
    """
    if boxes.ndim == 1 and boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.float32, device=boxes.device)
    boxes = _upcast(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: ``(N, 4)`` float XYXY.
        scores: ``(N,)`` same dtype as ``boxes``.
        iou_threshold: boxes with IoU strictly greater than this with a kept box are dropped.

    Returns:
        ``(K,)`` int64 indices of kept boxes in decreasing score order.
    """
    n = int(boxes.shape[0])
    if n == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = scores.detach().cpu().sort(0, descending=True)[1].numpy()  # same call as the C++ kernel
    b = boxes.detach().cpu().numpy()                 # (N, 4) in the boxes' own dtype (float32 for SAM)
    x1, y1, x2, y2 = (np.ascontiguousarray(b[order, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    zero = b.dtype.type(0)
    thr = float(iou_threshold)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(n):
            if suppressed[i]:
                continue
            keep.append(order[i])
            rest = slice(i + 1, n)
            w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
            h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
            inter = w * h
            ovr = inter / (areas[i] + areas[rest] - inter)   # same dtype arithmetic as the C++ kernel
            suppressed[rest] |= ovr.astype(np.float64) > thr
    return torch.as_tensor(np.asarray(keep, dtype=np.int64), device=boxes.device)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """NMS independently per category ``idxs``; returns kept indices by decreasing score."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if boxes.numel() > 4000:  # torchvision's CPU switch to the per-category loop
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for cat in torch.unique(idxs):
            members = torch.where(idxs == cat)[0]
            kept = nms(boxes[members], scores[members], iou_threshold)
            keep_mask[members[kept]] = True
        keep = torch.where(keep_mask)[0]
        return keep[scores[keep].sort(descending=True)[1]]
    # coordinate trick: shift each category far away so that categories never overlap
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


# ------------------------------------------------------------------------------------ transforms

def _pil_image_module():
    from PIL import Image

    return Image


def resize(img, size, interpolation=None, max_size=None, antialias=True):
    """Resize a PIL image (bilinear by default) or a ``(..., C, H, W)`` tensor.

    Args:
        img: PIL image or tensor.
        size: ``(h, w)``, or an int = target length of the shorter side (aspect kept).
        interpolation: PIL resample constant (default BILINEAR) -- torchvision enums are not supported.
    """
    Image = _pil_image_module()
    if isinstance(img, torch.Tensor):
        h0, w0 = int(img.shape[-2]), int(img.shape[-1])
    else:
        w0, h0 = img.size
    if isinstance(size, int) or (isinstance(size, (list, tuple)) and len(size) == 1):
        short = int(size if isinstance(size, int) else size[0])
        if w0 <= h0:
            new_w, new_h = short, int(short * h0 / w0)
        else:
            new_h, new_w = short, int(short * w0 / h0)
        if max_size is not None and max(new_w, new_h) > max_size:
            r = max_size / max(new_w, new_h)
            new_w, new_h = int(new_w * r), int(new_h * r)
    else:
        new_h, new_w = int(size[0]), int(size[1])
    if isinstance(img, torch.Tensor):
        x = img if img.is_floating_point() else img.float()
        shape = x.shape
        x = x.reshape(-1, *shape[-3:]) if x.ndim >= 3 else x[None, None]
        y = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False,
                                            antialias=bool(antialias))
        y = y.reshape(*shape[:-2], new_h, new_w)
        return y if img.is_floating_point() else y.round().clamp(0, 255).to(img.dtype)
    resample = Image.BILINEAR if interpolation is None else interpolation
    return img.resize((new_w, new_h), resample)


def to_pil_image(pic, mode=None):
    """Numpy ``(H, W[, C])`` or tensor ``(C, H, W)`` -> PIL image (float tensors are scaled by 255)."""
    Image = _pil_image_module()
    if isinstance(pic, torch.Tensor):
        t = pic.detach().cpu()
        if t.ndim == 2:
            t = t[None]
        if t.is_floating_point():
            t = t.mul(255).byte()
        arr = t.permute(1, 2, 0).numpy()
    else:
        arr = np.asarray(pic)
        if arr.ndim == 2:
            arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"to_pil_image expects a 2-D or 3-D array, got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(arr), mode=mode) if mode else Image.fromarray(
        np.ascontiguousarray(arr))


# ------------------------------------------------------------------------------------ registration

def _torchvision_works() -> bool:
    """True when a real torchvision imports and exposes what segment_anything needs."""
    mod = sys.modules.get("torchvision")
    if mod is not None and getattr(mod, "__clam2sam_standin__", False):
        return False
    try:
        from torchvision.ops.boxes import batched_nms as _b, box_area as _a  # noqa: F401
        from torchvision.transforms.functional import resize as _r, to_pil_image as _p  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure (missing, ABI mismatch, missing operator)
        for name in list(sys.modules):
            if name == "torchvision" or name.startswith("torchvision."):
                del sys.modules[name]  # drop half-imported modules before installing the stand-in
        return False
    return True


def _build_modules() -> dict[str, types.ModuleType]:
    mods = {name: types.ModuleType(name) for name in _MODULES}
    tv = mods["torchvision"]
    tv.__version__ = STANDIN_VERSION
    tv.__clam2sam_standin__ = True
    tv.__doc__ = "clam2sam's torchvision stand-in (see clam2sam.sam.tv_standin)"
    tv.__path__ = []  # a package, so that submodule imports resolve through sys.modules
    tv.ops, tv.transforms = mods["torchvision.ops"], mods["torchvision.transforms"]
    mods["torchvision.ops"].__path__ = []
    mods["torchvision.transforms"].__path__ = []
    mods["torchvision.ops"].boxes = mods["torchvision.ops.boxes"]
    mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]
    for m in (mods["torchvision.ops"], mods["torchvision.ops.boxes"]):
        m.nms, m.batched_nms, m.box_area = nms, batched_nms, box_area
    mods["torchvision.transforms.functional"].resize = resize
    mods["torchvision.transforms.functional"].to_pil_image = to_pil_image
    return mods


def ensure_torchvision() -> str:
    """Make ``import segment_anything`` possible.

    Returns:
        ``"torchvision <version>"`` when a real torchvision works, else ``"stand-in"`` after registering
        the stand-in modules (idempotent).
    """
    if _torchvision_works():
        import torchvision

        return f"torchvision {torchvision.__version__}"
    if not getattr(sys.modules.get("torchvision"), "__clam2sam_standin__", False):
        sys.modules.update(_build_modules())
    return "stand-in"


def import_segment_anything():
    """Import and return the ``segment_anything`` package (installing the stand-in when needed)."""
    ensure_torchvision()
    import segment_anything

    return segment_anything

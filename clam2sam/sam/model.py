"""Build and load a SAM model safely: weights-only checkpoints, clear errors, loaded once per process.

segment_anything's own ``sam_model_registry[type](checkpoint=path)`` calls ``torch.load`` without
``weights_only`` or ``map_location``. Here the network is built empty (on the ``meta`` device, so a
2.5 GB vit_h is not first filled with random numbers) and the state dict is loaded with
``torch.load(path, map_location="cpu", weights_only=True)``: a checkpoint that holds anything but tensors
is refused, never executed.

Model types: ``vit_h``, ``vit_l``, ``vit_b`` (segment_anything's registry). ``tiny`` is a TEST-ONLY
random-weight model (256-px input, 2 blocks, ~0.3M parameters) used by the test suite and the benchmark;
it produces no meaningful masks. Further builders can be added with :func:`register_model_type`.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import time
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from clam2sam._lazy import LazyModule
torch = LazyModule("torch")  # imported on first use: keeps CLI start-up fast

from clam2sam.errors import SamError
from clam2sam.sam.tv_standin import import_segment_anything

USER_MODEL_TYPES = ("vit_h", "vit_l", "vit_b")
TEST_MODEL_TYPES = ("tiny",)
PIXEL_MEAN = (123.675, 116.28, 103.53)  # SAM's constants (non-persistent buffers: not in checkpoints)
PIXEL_STD = (58.395, 57.12, 57.375)
_ENCODER_KEY = "image_encoder.patch_embed.proj.weight"  # (embed_dim, 3, 16, 16)


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model type and how to recognise its checkpoints."""

    name: str
    builder: Callable[[], torch.nn.Module]   # returns an (uninitialised) Sam
    embed_dim: int                           # image encoder width
    depth: int                               # number of encoder blocks
    test_only: bool = False


_SPECS: dict[str, ModelSpec] = {}
_MODEL_CACHE: dict[tuple, "LoadedSam"] = {}
_SHA_CACHE: dict[tuple, str] = {}


def register_model_type(name: str, builder: Callable[[], torch.nn.Module], *, embed_dim: int, depth: int,
                        test_only: bool = False) -> None:
    """Add a model type (e.g. a custom encoder wrapped in segment_anything's ``Sam``)."""
    _SPECS[name] = ModelSpec(name, builder, embed_dim, depth, test_only)


def _registry_builder(name: str) -> Callable[[], torch.nn.Module]:
    def build():
        return import_segment_anything().sam_model_registry[name](checkpoint=None)
    return build


def build_sam_tiny() -> torch.nn.Module:
    """TEST-ONLY tiny random SAM: 256-px ViT (embed 64, depth 2) + 64-d prompt encoder/decoder."""
    sa = import_segment_anything()
    m = sa.modeling
    img_size, patch, prompt_dim = 256, 16, 64
    return m.Sam(
        image_encoder=m.ImageEncoderViT(
            img_size=img_size, patch_size=patch, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2,
            out_chans=prompt_dim, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True, window_size=4, global_attn_indexes=(1,)),
        prompt_encoder=m.PromptEncoder(
            embed_dim=prompt_dim, image_embedding_size=(img_size // patch, img_size // patch),
            input_image_size=(img_size, img_size), mask_in_chans=8),
        mask_decoder=m.MaskDecoder(
            num_multimask_outputs=3,
            transformer=m.TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=128, num_heads=2),
            transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=64),
        pixel_mean=list(PIXEL_MEAN), pixel_std=list(PIXEL_STD)).eval()


for _name, _dim, _depth in (("vit_h", 1280, 32), ("vit_l", 1024, 24), ("vit_b", 768, 12)):
    register_model_type(_name, _registry_builder(_name), embed_dim=_dim, depth=_depth)
register_model_type("tiny", build_sam_tiny, embed_dim=64, depth=2, test_only=True)


def model_types(*, include_test: bool = False) -> list[str]:
    return [n for n, s in _SPECS.items() if include_test or not s.test_only]


# ----------------------------------------------------------------------------------------- helpers

def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (cached per process by path, size and mtime)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(8 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def resolve_device(device: str | None) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cuda[:i]`` must exist."""
    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SamError("--device cuda was requested but torch sees no CUDA device",
                           fix="use --device cpu (or auto), or install a CUDA build of torch")
        idx = device.split(":", 1)[1] if ":" in device else "0"
        if not idx.isdigit() or int(idx) >= torch.cuda.device_count():
            raise SamError(f"no CUDA device {device!r} ({torch.cuda.device_count()} visible)",
                           fix="pass --device cuda or cuda:<index>")
        return device
    if device != "cpu":
        raise SamError(f"unknown device {device!r}", fix="use auto, cpu, cuda or cuda:<index>")
    return device


def detect_model_type(state: dict) -> str | None:
    """Name of the registered type whose encoder width and depth match the state dict, else None."""
    w = state.get(_ENCODER_KEY)
    if not isinstance(w, torch.Tensor) or w.ndim != 4:
        return None
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for spec in _SPECS.values():
        if spec.embed_dim == int(w.shape[0]) and spec.depth == depth:
            return spec.name
    return None


def _describe(state: dict) -> str:
    w = state.get(_ENCODER_KEY)
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    return f"encoder width {int(w.shape[0]) if isinstance(w, torch.Tensor) else '?'}, {depth} blocks"


def read_state_dict(path: str | os.PathLike) -> dict:
    """Load a checkpoint's state dict with ``weights_only=True``; every failure becomes a SamError."""
    path = Path(path)
    if not path.exists():
        raise SamError("SAM checkpoint not found", path=path,
                       fix="download sam_vit_h_4b8939.pth (or vit_l/vit_b) from the segment-anything "
                           "README and pass its path to --sam-checkpoint")
    if path.is_dir():
        raise SamError("SAM checkpoint is a directory, not a file", path=path,
                       fix="pass the .pth file itself to --sam-checkpoint")
    try:
        try:  # zip-format checkpoints (all official ones) are memory-mapped: cheap to inspect, shared pages
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)  # legacy (pre-1.6) format
    except pickle.UnpicklingError as e:
        raise SamError("checkpoint holds objects outside torch's weights-only allow-list; it was NOT "
                       f"loaded ({str(e).splitlines()[0][:200]})", path=path,
                       fix="pass a plain state dict (torch.save(model.state_dict(), path)), e.g. the "
                           "official sam_vit_*.pth files") from e
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
        raise SamError(f"unreadable SAM checkpoint ({type(e).__name__}: {str(e)[:200]})", path=path,
                       fix="the file is truncated or not a torch checkpoint; download it again") from e
    if isinstance(obj, dict):
        for wrapper in ("model", "state_dict"):
            if wrapper in obj and isinstance(obj[wrapper], dict) and _ENCODER_KEY not in obj:
                obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SamError(f"checkpoint holds a {type(obj).__name__}, not a SAM state dict (name -> tensor)",
                       path=path, fix="pass an official sam_vit_*.pth file or torch.save(sam.state_dict())")
    if _ENCODER_KEY not in obj:
        first = ", ".join(list(obj)[:3])
        raise SamError(f"not a segment-anything (SAM v1) checkpoint: no {_ENCODER_KEY} (keys start with "
                       f"{first})", path=path,
                       fix="SAM 2, MobileSAM and HF-transformers weights are other formats; use a "
                           "sam_vit_h/l/b .pth file")
    return obj


# ----------------------------------------------------------------------------------------- loading

@dataclass
class LoadedSam:
    """A SAM network ready for inference plus what identifies it."""

    model: torch.nn.Module
    model_type: str
    checkpoint: str
    checkpoint_sha256: str
    device: str
    load_seconds: float


def _check_type(model_type: str, state: dict, path: Path) -> None:
    if model_type not in _SPECS:
        raise SamError(f"unknown SAM model type {model_type!r}", fix=f"use one of {', '.join(model_types())}")
    detected = detect_model_type(state)
    if detected != model_type:
        found = detected or f"an unknown SAM variant ({_describe(state)})"
        raise SamError(f"checkpoint is {found}, not {model_type}", path=path,
                       fix=f"pass --sam-model {detected}" if detected else "pass a matching --sam-model")


def validate_checkpoint(model_type: str, checkpoint: str | os.PathLike) -> str:
    """Check that ``checkpoint`` is a safe state dict of ``model_type`` (cheap: memory-mapped).

    Returns:
        The checkpoint's sha256.

    Raises:
        SamError: as :func:`load_sam`.
    """
    if checkpoint is None or str(checkpoint) == "":
        raise SamError("no SAM checkpoint given", fix="pass --sam-checkpoint PATH")
    path = Path(checkpoint)
    state = read_state_dict(path)
    _check_type(model_type, state, path)
    del state
    return file_sha256(path)


def load_sam(model_type: str, checkpoint: str | os.PathLike, device: str = "auto", *,
             sha256: str | None = None) -> LoadedSam:
    """Build ``model_type`` and load ``checkpoint`` into it; cached, so each process loads a model once.

    Args:
        sha256: the checkpoint's sha256 when already known (skips re-hashing a multi-GB file per worker).

    Raises:
        SamError: unknown type, missing/unreadable/unsafe checkpoint, checkpoint of another model type.
    """
    if model_type not in _SPECS:
        raise SamError(f"unknown SAM model type {model_type!r}", fix=f"use one of {', '.join(model_types())}")
    if checkpoint is None or str(checkpoint) == "":
        raise SamError("no SAM checkpoint given", fix="pass --sam-checkpoint PATH")
    device = resolve_device(device)
    path = Path(checkpoint)
    st = path.stat() if path.exists() else None
    key = (model_type, os.path.realpath(path), st and st.st_size, st and st.st_mtime_ns, device)
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    t0 = time.perf_counter()
    state = read_state_dict(path)
    _check_type(model_type, state, path)
    model = _build_with_state(_SPECS[model_type], state, path)
    model.to(device).eval()
    loaded = LoadedSam(model, model_type, str(path), sha256 or file_sha256(path), device, time.perf_counter() - t0)
    _MODEL_CACHE[key] = loaded
    return loaded


def _build_with_state(spec: ModelSpec, state: dict, path: Path) -> torch.nn.Module:
    with torch.device("meta"):
        model = spec.builder()
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise SamError(f"checkpoint does not fit the {spec.name} network ({msg[:300]})", path=path,
                       fix="pass the --sam-model this checkpoint was trained as") from e
    model.pixel_mean = torch.tensor(PIXEL_MEAN, dtype=torch.float32).view(-1, 1, 1)
    model.pixel_std = torch.tensor(PIXEL_STD, dtype=torch.float32).view(-1, 1, 1)
    meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if meta:
        raise SamError(f"checkpoint leaves {len(meta)} tensors unset (e.g. {meta[0]})", path=path,
                       fix="pass a complete SAM state dict")
    return model


def save_random_checkpoint(model_type: str, path: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a random-weight checkpoint of ``model_type`` (tests and benchmarks; no real weights needed)."""
    torch.manual_seed(seed)
    model = _SPECS[model_type].builder()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def clear_model_cache() -> None:
    _MODEL_CACHE.clear()

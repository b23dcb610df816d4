import hashlib

import pytest
import torch

from clam2sam.sam import model as sm
from clam2sam.errors import SamError
from clam2sam.sam.tv_standin import import_segment_anything

from tests.clam2sam._sam_fixtures import tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", seed=0)


def _fake_state(embed_dim: int, depth: int) -> dict:
    """Just enough keys for type detection (tiny tensors, shapes where they matter)."""
    sd = {"image_encoder.patch_embed.proj.weight": torch.zeros(embed_dim, 3, 16, 16)}
    for i in range(depth):
        sd[f"image_encoder.blocks.{i}.norm1.weight"] = torch.zeros(1)
    return sd


def test_tiny_checkpoint_loads_through_the_user_path(ckpt):
    sm.clear_model_cache()
    loaded = sm.load_sam("tiny", ckpt, "cpu")
    saved = torch.load(ckpt, weights_only=True)
    got = loaded.model.state_dict()
    assert set(got) == set(saved)
    assert all(torch.equal(got[k], saved[k]) for k in saved)
    assert loaded.checkpoint_sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert loaded.model.image_encoder.img_size == 256
    assert loaded.model.pixel_mean.flatten().tolist() == pytest.approx(list(sm.PIXEL_MEAN))
    assert not any(t.is_meta for t in loaded.model.parameters())
    assert sm.load_sam("tiny", ckpt, "cpu") is loaded  # once per process


def test_loaded_model_predicts_like_a_directly_built_one(ckpt):
    torch.manual_seed(0)
    direct = sm.build_sam_tiny()  # same seed as the checkpoint: identical weights
    loaded = sm.load_sam("tiny", ckpt, "cpu").model
    x = torch.rand(1, 3, 256, 256) * 255
    with torch.no_grad():
        a = direct.image_encoder(direct.preprocess(x))
        b = loaded.image_encoder(loaded.preprocess(x))
    assert torch.allclose(a, b)


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_detect_model_type_from_real_shapes(name):
    sa = import_segment_anything()
    with torch.device("meta"):
        model = sa.sam_model_registry[name]()
    assert sm.detect_model_type(model.state_dict()) == name


def test_checkpoint_of_another_model_type(tmp_path):
    p = tmp_path / "sam_vit_b.pth"
    torch.save(_fake_state(768, 12), p)
    with pytest.raises(SamError, match=r"checkpoint is vit_b, not vit_h -- pass --sam-model vit_b") as e:
        sm.load_sam("vit_h", p, "cpu")
    assert str(p) in str(e.value)
    torch.save(_fake_state(512, 7), p)
    with pytest.raises(SamError, match="unknown SAM variant .encoder width 512, 7 blocks"):
        sm.validate_checkpoint("vit_b", p)


def test_tiny_checkpoint_refused_as_vit_h(ckpt):
    with pytest.raises(SamError, match="checkpoint is tiny, not vit_h"):
        sm.load_sam("vit_h", ckpt, "cpu")


def test_missing_and_directory_checkpoints(tmp_path):
    with pytest.raises(SamError, match="SAM checkpoint not found.*--sam-checkpoint"):
        sm.load_sam("vit_h", tmp_path / "nope.pth", "cpu")
    with pytest.raises(SamError, match="is a directory"):
        sm.validate_checkpoint("vit_h", tmp_path)
    with pytest.raises(SamError, match="no SAM checkpoint given"):
        sm.load_sam("vit_h", None, "cpu")
    with pytest.raises(SamError, match="unknown SAM model type 'vit_x'"):
        sm.load_sam("vit_x", tmp_path / "nope.pth", "cpu")


class Payload:  # not on torch's weights-only allow-list
    def __init__(self):
        self.x = 1


def test_non_state_dict_payloads(tmp_path, ckpt):
    p = tmp_path / "obj.pth"
    torch.save(Payload(), p)
    with pytest.raises(SamError, match="outside torch's weights-only allow-list; it was NOT loaded"):
        sm.read_state_dict(p)
    torch.save(torch.zeros(3), p)
    with pytest.raises(SamError, match="holds a Tensor, not a SAM state dict"):
        sm.read_state_dict(p)
    torch.save({"linear.weight": torch.zeros(2, 2)}, p)
    with pytest.raises(SamError, match="not a segment-anything .SAM v1. checkpoint"):
        sm.read_state_dict(p)
    p.write_text("hello")
    with pytest.raises(SamError, match="unreadable SAM checkpoint"):
        sm.read_state_dict(p)
    data = ckpt.read_bytes()
    p.write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(SamError, match="unreadable SAM checkpoint.*download it again"):
        sm.read_state_dict(p)


def test_wrapped_and_legacy_format_state_dicts_load(tmp_path, ckpt):
    sd = torch.load(ckpt, weights_only=True)
    p = tmp_path / "wrapped.pth"
    torch.save({"model": sd}, p)
    assert set(sm.read_state_dict(p)) == set(sd)
    q = tmp_path / "legacy.pth"
    torch.save(sd, q, _use_new_zipfile_serialization=False)  # not memory-mappable: plain load fallback
    assert sm.detect_model_type(sm.read_state_dict(q)) == "tiny"


def test_incomplete_state_dict_does_not_fit(tmp_path, ckpt):
    sd = torch.load(ckpt, weights_only=True)
    sd.pop("mask_decoder.iou_token.weight")
    p = tmp_path / "partial.pth"
    torch.save(sd, p)
    with pytest.raises(SamError, match="does not fit the tiny network.*iou_token"):
        sm.load_sam("tiny", p, "cpu")


def test_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert sm.resolve_device("auto") == "cpu" and sm.resolve_device("CPU") == "cpu"
    with pytest.raises(SamError, match="--device cuda was requested but torch sees no CUDA device"):
        sm.resolve_device("cuda")
    with pytest.raises(SamError, match="unknown device"):
        sm.resolve_device("tpu")


def test_tiny_is_test_only():
    assert sm.model_types() == ["vit_h", "vit_l", "vit_b"]
    assert "tiny" in sm.model_types(include_test=True)

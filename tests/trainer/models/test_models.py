import pytest
import torch

from clam2sam.errors import UsageError
from trainer.config import TrainConfig
from trainer.models import build_model, list_models, register_model
from trainer.models.base import MILModel

from tests.trainer.models.bags import make_bag


def cfg(**kw):
    return TrainConfig(store="x", out="y", **kw).resolve()


def test_registry_lists_and_refuses_unknown():
    assert {"abmil", "sam-mil"} <= set(list_models())
    with pytest.raises(UsageError, match="unknown model"):
        build_model("nope", 16, 2, cfg())
    with pytest.raises(ValueError, match="twice"):
        register_model("abmil")(type("Other", (MILModel,), {}))


def test_abmil_matches_reference_architecture():
    m = build_model("abmil", 1024, 2, cfg(model="abmil"))
    assert sum(p.numel() for p in m.parameters()) == 591_490        # reference state dict, D = 1024
    assert m.attention[0].bias is None and m.attention[2].bias is None
    assert not m.embed_net[0].bias.detach().any() and not m.classifier.bias.detach().any()
    assert m.embed_net[2].p == 0.25


@pytest.mark.parametrize("name,gf", [("abmil", False), ("abmil", True), ("sam-mil", True), ("sam-mil", False)])
def test_forward_outputs(name, gf):
    bag = make_bag()
    m = build_model(name, 16, 2, cfg(model=name, group_features=gf)).eval()
    out = m(bag)
    T = 60 + (4 if gf else 0)
    assert out["logits"].shape == (1, 2)
    assert out["scores"].shape == (T,)
    assert float(out["scores"].detach().sum()) == pytest.approx(1.0, abs=1e-5)
    assert out["n_patches"] == 60


def test_sam_mil_eval_is_backbone_on_full_bag():
    bag = make_bag()
    m = build_model("sam-mil", 16, 2, cfg()).eval()
    assert torch.equal(m(bag)["logits"], m.backbone(bag)["logits"])


@pytest.mark.parametrize("term", ["ce", "pb", "con"])
def test_each_loss_term_reaches_trained_parameters(term):
    torch.manual_seed(0)
    bag = make_bag()
    m = build_model("sam-mil", 16, 2, cfg(alpha=0.5, beta=1.0))
    out = m.loss_dict(bag)
    assert float(out[term].detach()) > 0
    m.zero_grad()
    out[term].backward()
    for name in ("backbone.embed_net.0.weight", "backbone.attention.0.weight", "backbone.attention.2.weight"):
        p = dict(m.named_parameters())[name]
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, (term, name)
    if term != "con":   # the attention-only term cannot move the classifier
        assert float(m.backbone.classifier.weight.grad.abs().sum()) > 0


def test_total_loss_is_weighted_sum():
    torch.manual_seed(0)
    out = build_model("sam-mil", 16, 2, cfg(alpha=0.3, beta=2.0)).loss_dict(make_bag())
    assert float(out["loss"].detach()) == pytest.approx(float((out["ce"] + 0.3 * out["pb"] + 2.0 * out["con"]
                                                                      + 0.5 * out["inst_max"]).detach()), rel=1e-6)


def test_sam_mil_embeds_once_per_step(monkeypatch):
    bag = make_bag()
    m = build_model("sam-mil", 16, 2, cfg(beta=1.0))
    calls = []
    orig = m.backbone.embed
    monkeypatch.setattr(m.backbone, "embed", lambda x: calls.append(x.shape[0]) or orig(x))
    m.loss_dict(bag)
    assert calls == [64]                        # one embedding of the full bag (60 patches + 4 group tokens)


def test_masked_bag_keeps_group_tokens_and_reduces_patches():
    torch.manual_seed(0)
    bag = make_bag(N=400, S=4)
    m = build_model("sam-mil", 16, 2, cfg(mask="sam", ratio_fn="constant", mask_ratio=0.5))
    out = m.loss_dict(bag)
    groups = m.sg2m.groups(bag)
    dropped = sum(int((groups.group_of_patch == k).sum()) // 2 for k in range(groups.n_groups))
    assert out["n_kept"] == 404 - dropped


@pytest.mark.parametrize("backbone", ["abmil", "abmil-gated"])
def test_sub_bag_pooling_in_one_product_equals_the_per_sub_bag_head(backbone):
    torch.manual_seed(0)
    m = build_model(backbone, 16, 2, cfg(model="abmil")).eval()
    bag = make_bag(N=50)
    h = m.embed(m.tokens(bag))
    c = m.instance_cache(h)
    g = torch.Generator().manual_seed(1)
    rows = [torch.randperm(h.shape[0], generator=g)[:k].sort().values for k in (30, 7, 1, 50)]
    subsets = torch.zeros(len(rows), h.shape[0], dtype=torch.bool)
    for i, r in enumerate(rows):
        subsets[i, r] = True
    fast = m.pool_subsets(h, c, subsets)
    slow = torch.cat([m.head(h[r], c[r])["logits"] for r in rows])
    assert torch.allclose(fast, slow, atol=1e-5)


def test_mask_warmup_ramps_the_mask_ratio_from_zero():
    bag = make_bag(N=400, S=4)
    m = build_model("sam-mil", 16, 2, cfg(mask="sam", ratio_fn="constant", mask_ratio=0.5, mask_warmup=4))
    groups = m.sg2m.groups(bag)
    counts = torch.bincount(groups.group_of_patch, minlength=groups.n_groups)
    kept = {}
    for epoch in (0, 2, 4, 9):
        m.set_epoch(epoch)
        kept[epoch] = m.loss_dict(bag)["n_kept"]
    mr = {0: 0.0, 2: 0.25, 4: 0.5, 9: 0.5}
    for epoch, ratio in mr.items():   # floor(n_k * MR * scale) dropped per group; 4 group tokens always kept
        dropped = sum(int(n * ratio + 1e-9) for n in counts.tolist())
        assert kept[epoch] == 404 - dropped, epoch
    assert kept[0] == 404 and kept[4] < kept[2] < kept[0]


def test_mask_warmup_zero_masks_from_the_first_step_and_negative_is_refused():
    m = build_model("sam-mil", 16, 2, cfg(mask="sam", ratio_fn="constant", mask_ratio=0.5))
    m.set_epoch(0)
    assert m.mask_scale() == 1.0 and m.loss_dict(make_bag(N=400, S=4))["n_kept"] < 300
    with pytest.raises(UsageError, match="mask-warmup"):
        cfg(mask_warmup=-1).validate()

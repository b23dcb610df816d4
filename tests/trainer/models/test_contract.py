"""The model contract, for every registered model (``list_models()``; a new model is tested by registering it).

Explicit keyword parameters (no TrainConfig inside a model), forward outputs (shapes and values),
``train_forward``'s loss terms (finite, declared, attached, summed with their weights), gradients,
``instance_logits`` equal to the bag-of-one prediction, and a state-dict round trip.
"""
import inspect

import pytest
import torch

from trainer.config import TrainConfig
from trainer.models import build_model, list_models, model_class
from trainer.models.base import METRIC_TERMS, MILModel, TrainOutput
from trainer.models.registry import BACKBONE_PARAM, model_kwargs, model_params

from tests.trainer.models.bags import make_bag as _make_bag

MODELS = list_models()
CONFIG_FIELDS = set(TrainConfig.__dataclass_fields__)


def make_bag(N=40, **kw):
    return _make_bag(N=N, **kw)


def cfg(name, gf=False, **kw):
    kw = {"hidden_dim": 32, "attn_dim": 16, "beta": 1.0, **kw}
    return TrainConfig(store="x", out="y", model=name, group_features=gf, **kw).resolve()


def build(name, gf=False, C=2, seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(name, 16, C, cfg(name, gf, **kw))


# ------------------------------------------------------------------------------------ construction

@pytest.mark.parametrize("name", MODELS)
def test_constructor_takes_keyword_parameters_not_the_config(name):
    cls = model_class(name)
    assert issubclass(cls, MILModel) and cls.model_name == name
    params = model_params(cls)
    assert "cfg" not in params and {"group_features", "max_instance_weight"} <= set(params)
    for p in params.values():
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, (name, p.name)
        # a parameter is filled from the TrainConfig field of its name; any other one needs a default
        assert p.name in CONFIG_FIELDS or p.name == BACKBONE_PARAM or p.default is not inspect.Parameter.empty
    # built directly from the mapped keywords == built by the registry (same seed, same parameters)
    c = cfg(name)
    torch.manual_seed(0)
    kw = model_kwargs(cls, c, 16, 2)
    direct = cls(16, 2, **kw)
    via = build(name)
    assert not any(isinstance(v, TrainConfig) for v in kw.values())
    sa, sb = direct.state_dict(), via.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", MODELS)
def test_config_values_reach_the_model(name):
    m = build(name, gf=True, max_instance_weight=0.25)
    assert m.use_group_features is True and m.max_instance_weight == 0.25
    assert build(name, gf=False).use_group_features is False
    hidden = {p.shape[0] for n, p in build(name, hidden_dim=24).named_parameters() if n.endswith("embed_net.0.weight")}
    assert hidden == {24}                         # hidden_dim -> the first layer's width


def test_extra_keys_fill_parameters_without_a_config_field():
    c = TrainConfig(store="x", out="y", model="clam-sb", group_features=False, extra={"clam_k": 3,
                                                                                        "clam_bag_weight": 0.5})
    m = build_model("clam-sb", 16, 2, c.resolve())
    assert (m.k, m.bag_weight) == (3, 0.5)


# ------------------------------------------------------------------------------------------ forward

@pytest.mark.parametrize("C", [2, 3])
@pytest.mark.parametrize("gf", [False, True])
@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_forward_shapes_and_values(name, gf, C):
    m = build(name, gf, C).eval()
    bag = make_bag()
    out = m(bag)
    T = 40 + (4 if gf else 0)
    assert out["logits"].shape == (1, C) and out["scores"].shape == (T,) and out["n_patches"] == 40
    assert torch.isfinite(out["logits"]).all() and torch.isfinite(out["scores"]).all()
    # forward == head(embed(tokens)) with the instance cache, and deterministic in eval mode
    h = m.embed(m.tokens(bag))
    again = m.head(h, m.instance_cache(h))
    assert torch.allclose(again["logits"], out["logits"], atol=1e-6)
    assert torch.allclose(again["scores"], out["scores"], atol=1e-6)
    assert m.score_kind in ("attention", "instance")
    if m.score_kind == "attention":                # attention weights: a distribution over the tokens
        assert float(out["scores"].sum()) == pytest.approx(1.0, abs=1e-5) and float(out["scores"].min()) >= 0


@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_instance_logits_equal_a_bag_of_one(name):
    m = build(name).eval()
    h = m.embed(m.tokens(make_bag()))[:9]
    c = m.instance_cache(h)
    il = m.instance_logits(h, c)
    assert il.shape == (9, 2) and torch.isfinite(il).all()
    slow = torch.cat([m.head(h[i:i + 1], None if c is None else c[i:i + 1])["logits"] for i in range(9)])
    assert torch.allclose(il, slow, atol=1e-5)
    assert torch.allclose(m.instance_logits(h), il, atol=1e-6)      # the cache is optional


# ------------------------------------------------------------------------------------- training step

@pytest.mark.parametrize("gf", [False, True])
@pytest.mark.parametrize("name", MODELS)
def test_train_forward_terms(name, gf):
    m = build(name, gf).train()
    torch.manual_seed(1)
    out = m.train_forward(make_bag())
    assert isinstance(out, TrainOutput)
    assert out.logits.shape == (1, 2) and not out.logits.requires_grad
    assert out.terms and set(out.terms) <= set(type(m).loss_terms), (name, set(out.terms))
    assert set(out.weights) == set(out.terms)
    for k, t in out.terms.items():
        assert t.dim() == 0 and torch.isfinite(t) and float(t.detach()) >= 0 and t.requires_grad, (name, k)
    total = sum(out.weights[k] * out.terms[k] for k in out.terms)
    assert float(out.loss.detach()) == pytest.approx(float(total.detach()), rel=1e-6) and float(out.loss.detach()) > 0
    torch.manual_seed(1)
    flat = m.loss_dict(make_bag())                      # the same step as one flat dict
    assert set(flat) == {"loss", "logits", *out.terms, *out.info}
    assert float(flat["loss"].detach()) == pytest.approx(float(out.loss.detach()), rel=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_written_loss_terms_are_columns_of_metrics_csv(name):
    """Every term a model declares is a metrics.csv column, except DSMIL's second-stream CE (documented)."""
    assert set(model_class(name).loss_terms) - set(METRIC_TERMS) <= {"max_ce"}


@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_the_parameters(name):
    """Over one bag of each class, the total loss reaches every parameter (CLAM-SB's instance classifier
    of a class only trains on that class's bags)."""
    m = build(name, True).train()
    m.zero_grad()
    for label, seed in ((0, 1), (1, 2)):
        m.train_forward(make_bag(label=label, seed=seed)).loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or float(p.grad.abs().sum()) == 0]
    assert missing == []


# --------------------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_state_dict_round_trip(name, tmp_path):
    a = build(name, True, seed=0).eval()
    a.set_feature_stats(torch.full((16,), 0.5), torch.full((16,), 2.0))
    torch.save(a.state_dict(), tmp_path / "m.pt")
    b = build(name, True, seed=1).eval()
    bag = make_bag()
    assert not torch.allclose(a(bag)["logits"], b(bag)["logits"])
    b.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))     # strict: same keys
    assert torch.equal(a(bag)["logits"], b(bag)["logits"]) and torch.equal(a(bag)["scores"], b(bag)["scores"])

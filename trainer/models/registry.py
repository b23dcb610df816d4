"""Model registry: ``@register_model("name")`` on a :class:`~trainer.models.base.MILModel` subclass, and the
one place where a run's :class:`~trainer.config.TrainConfig` becomes a model's keyword arguments.

Adding a model = one file ``trainer/models/<name>.py`` with a decorated class, plus its module name in
:data:`MODEL_MODULES`. The model modules are imported on the first :func:`list_models` / :func:`build_model`
/ :func:`model_class` call, so that importing this module (e.g. for :data:`DEFAULT_MODEL`) needs no torch.

A model never sees the TrainConfig. Its constructor declares keyword parameters (its own config, with
defaults); :func:`model_kwargs` fills each one from the TrainConfig field of the same name, else from
``cfg.extra[name]``, else leaves the default. A parameter named ``backbone`` receives a built model (the
TrainConfig's ``backbone`` name, built with the same config): a model that wraps another takes it that way.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Callable

from clam2sam.errors import UsageError

DEFAULT_MODEL = "sam-mil"      # ``samtrain fit --model``
DEFAULT_BACKBONE = "abmil"     # ``samtrain fit --backbone``: the MIL network a wrapping model trains

# modules under trainer/models/ holding registered models (imported on first use, in this order)
MODEL_MODULES = ("abmil", "sam_mil", "mean_pool", "max_pool", "abmil_gated", "transmil", "dsmil", "clam_sb")

BACKBONE_PARAM = "backbone"
_MODELS: dict[str, type] = {}
_loaded = False


def _load_models() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in MODEL_MODULES:
            importlib.import_module(f"trainer.models.{mod}")


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator registering a model under ``name`` (must be unique)."""
    def deco(cls: type) -> type:
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"model {name!r} registered twice ({_MODELS[name].__name__}, {cls.__name__})")
        _MODELS[name] = cls
        cls.model_name = name
        return cls
    return deco


def list_models() -> list[str]:
    _load_models()
    return sorted(_MODELS)


def model_class(name: str) -> type:
    """The class registered under ``name``; UsageError (exit 2) naming the choices when unknown."""
    _load_models()
    if name not in _MODELS:
        raise UsageError(f"unknown model {name!r}", fix=f"choose one of: {', '.join(list_models())}")
    return _MODELS[name]


def model_params(cls: type) -> dict[str, inspect.Parameter]:
    """Keyword parameters of ``cls`` and of the base classes it forwards ``**kwargs`` to (most derived first)."""
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        sig = inspect.signature(init)
        for p in list(sig.parameters.values())[3:]:             # after self, in_dim, n_classes
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                params.setdefault(p.name, p)
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            break                                               # this __init__ forwards nothing further up
    return params


def model_kwargs(cls: type, cfg, in_dim: int, n_classes: int) -> dict:
    """The keyword arguments of ``cls`` taken from ``cfg`` (a TrainConfig): the mapping, in one place."""
    extra = getattr(cfg, "extra", None) or {}
    kw = {}
    for name in model_params(cls):
        if name == BACKBONE_PARAM:
            kw[name] = build_model(cfg.backbone, in_dim, n_classes, cfg)
        elif hasattr(cfg, name):
            kw[name] = getattr(cfg, name)
        elif name in extra:
            kw[name] = extra[name]
    return kw


def build_model(name: str, in_dim: int, n_classes: int, cfg) -> "object":
    """Instantiate a registered model: ``cls(in_dim, n_classes, **model_kwargs(cls, cfg))``."""
    cls = model_class(name)
    return cls(in_dim, n_classes, **model_kwargs(cls, cfg, in_dim, n_classes))

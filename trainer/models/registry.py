"""Model registry: ``@register_model("name")`` on a :class:`~trainer.models.base.MILModel` subclass.

Adding a model = one file ``trainer/models/<name>.py`` with a decorated class, plus one import line in
``trainer/models/__init__.py``.
"""
from __future__ import annotations

from typing import Callable

from clam2sam.errors import UsageError

_MODELS: dict[str, type] = {}


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
    return sorted(_MODELS)


def build_model(name: str, in_dim: int, n_classes: int, cfg) -> "object":
    """Instantiate a registered model: ``cls(in_dim, n_classes, cfg)`` (cfg: TrainConfig)."""
    if name not in _MODELS:
        raise UsageError(f"unknown model {name!r}", fix=f"choose one of: {', '.join(list_models())}")
    return _MODELS[name](in_dim, n_classes, cfg)

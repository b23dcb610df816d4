"""MIL models. Each module registers its class with ``@register_model``; list its module name in
:data:`trainer.models.registry.MODEL_MODULES` (one entry). Model modules load on first use."""
from trainer.models.registry import (DEFAULT_BACKBONE, DEFAULT_MODEL, build_model, list_models,  # noqa: F401
                                     model_class, register_model)


def __getattr__(name: str):
    if name == "MILModel":                       # lazy: importing the registry needs no torch
        from trainer.models.base import MILModel

        return MILModel
    raise AttributeError(f"module 'trainer.models' has no attribute {name!r}")

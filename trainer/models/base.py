"""The interface every MIL model shares.

A model sees one :class:`~trainer.data.Bag` at a time. Its tokens are the patch features, followed by
the segment group features when ``cfg.group_features`` is on::

    x = tokens(bag)                  (T, D), T = N (+ S)
    h = embed(x)                     (T, E)   per-instance network (dropout inside)
    c = instance_cache(h)            (T, ...) optional per-instance precompute (e.g. attention logits),
                                              indexable like h; None when the model has none
    out = head(h[idx], c[idx])       dict: logits (1, C), scores (len(idx),), embedding (1, E)

``forward(bag)`` runs that on all tokens; ``loss_dict(bag)`` returns ``{"loss": total, <term>: tensor}``
with every term still attached to the graph (plain models: ``ce`` on the full bag; SAM-MIL adds ``pb``
and ``con``); the loop back-propagates ``loss`` and logs the terms. ``scores`` are attention weights (or instance scores);
the first ``N`` entries align with the store's ``coords``. Splitting embed / head lets SAM-MIL embed a
bag once and reuse it for the masked bag, the pseudo-bags and the consistency term.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MILModel(nn.Module):
    """Base class. Subclasses implement ``embed`` and ``head`` (and optionally ``instance_cache``)."""

    model_name = "base"

    def __init__(self, in_dim: int, n_classes: int, cfg):
        super().__init__()
        self.in_dim, self.n_classes = in_dim, n_classes
        self.use_group_features = bool(cfg.group_features)

    # -- token layout
    def tokens(self, bag) -> torch.Tensor:
        """``(T, D)``: patches, then group features when enabled."""
        if self.use_group_features and bag.n_segments:
            return torch.cat([bag.features, bag.group_features], dim=0)
        return bag.features

    def n_group_tokens(self, bag) -> int:
        return bag.n_segments if self.use_group_features else 0

    # -- the three stages
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def instance_cache(self, h: torch.Tensor) -> torch.Tensor | None:
        return None

    def head(self, h: torch.Tensor, cache: torch.Tensor | None = None) -> dict:
        raise NotImplementedError

    # -- public API
    def forward(self, bag) -> dict:
        h = self.embed(self.tokens(bag))
        out = self.head(h, self.instance_cache(h))
        out["n_patches"] = bag.n_patches
        return out

    def loss_dict(self, bag) -> dict:
        out = self.forward(bag)
        ce = F.cross_entropy(out["logits"], bag.label.view(1))
        return {"loss": ce, "ce": ce, "logits": out["logits"].detach()}


def init_linear_xavier(module: nn.Module) -> None:
    """xavier_normal_ on every Linear weight, zero biases (as the reference code)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

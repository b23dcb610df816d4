"""Mean-pooling MIL: an instance-level network, then the mean of the instance logits.

    embed:      Linear(D, E) -> ReLU -> Dropout              h: (T, E)
    instances:  Linear(E, C)                                 c: (T, C)  per-instance logits (instance_cache)
    pooling:    logits = mean_i c_i                          (1, C)
    scores:     softmax(c)[:, k]                             (T,)   instance probability of the score class
                                                                    (binary: positive class)

The classical "mean-pooling" baseline of the MIL literature (e.g. Wang et al. 2018, "Revisiting
multiple instance neural networks"; SAM-MIL Table 1). With a linear instance classifier the mean of the
logits equals the classifier applied to the mean embedding.
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.models.base import MILModel, init_linear_xavier
from trainer.models.common import instance_embedding, score_class
from trainer.models.registry import register_model


@register_model("mean")
class MeanPoolMIL(MILModel):
    score_kind = "instance"

    def __init__(self, in_dim: int, n_classes: int, *, hidden_dim: int = 512, dropout: float = 0.25, **common):
        super().__init__(in_dim, n_classes, **common)
        self.embed_net = instance_embedding(in_dim, hidden_dim, dropout)
        self.instance_classifier = nn.Linear(hidden_dim, n_classes)
        init_linear_xavier(self)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_net(x)                              # (T, E)

    def instance_cache(self, h: torch.Tensor) -> torch.Tensor:
        return self.instance_classifier(h)                    # (T, C)

    def instance_logits(self, h: torch.Tensor, cache: torch.Tensor | None = None) -> torch.Tensor:
        """``(T, C)``: the logits of a bag holding only that instance."""
        return self.instance_cache(h) if cache is None else cache

    def pool(self, c: torch.Tensor) -> torch.Tensor:
        return c.mean(0, keepdim=True)                        # (1, C)

    def instance_scores(self, c: torch.Tensor, k: int) -> torch.Tensor:
        return torch.softmax(c, dim=1)[:, k]                  # (T,)

    def head(self, h: torch.Tensor, cache: torch.Tensor | None = None) -> dict:
        c = self.instance_cache(h) if cache is None else cache   # (T, C)
        logits = self.pool(c)                                 # (1, C)
        return {"logits": logits, "scores": self.instance_scores(c, score_class(logits)),
                "embedding": h.mean(0, keepdim=True)}

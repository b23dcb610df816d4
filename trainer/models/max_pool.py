"""Max-pooling MIL (mi-Net style): an instance-level network, then the per-class maximum of the logits.

    embed:      Linear(D, E) -> ReLU -> Dropout              h: (T, E)
    instances:  Linear(E, C)                                 c: (T, C)  per-instance logits (instance_cache)
    pooling:    logits[k] = max_i c_i[k]                     (1, C)
    scores:     c[:, k]                                      (T,)   per-instance logit of the score class
                                                                    (binary: positive class)

The "max-pooling" baseline of SAM-MIL Table 1 (Wang et al. 2018). Only the arg-max instance of each
class receives a gradient in a step; the weights are shared, so every parameter is still trained.
"""
from __future__ import annotations

import torch

from trainer.models.mean_pool import MeanPoolMIL
from trainer.models.registry import register_model


@register_model("max")
class MaxPoolMIL(MeanPoolMIL):
    def pool(self, c: torch.Tensor) -> torch.Tensor:
        return c.max(0, keepdim=True).values                  # (1, C)

    def instance_scores(self, c: torch.Tensor, k: int) -> torch.Tensor:
        return c[:, k]                                        # (T,) raw logits (unbounded)

"""AB-MIL (Ilse et al. 2018) as configured in SAM-MIL's reference: non-gated, ReLU attention, no biases.

    embed:     Linear(D, 512) -> ReLU -> Dropout(0.25)                  h: (T, 512)
    attention: Linear(512, 128, bias=False) -> ReLU -> Linear(128, 1, bias=False), softmax over T
    pooling:   z = a @ h                                                z: (1, 512)
    classifier Linear(512, C)
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.models.base import MILModel, init_linear_xavier
from trainer.models.registry import register_model


@register_model("abmil")
class ABMIL(MILModel):
    attention_pooling = True

    def __init__(self, in_dim: int, n_classes: int, *, hidden_dim: int = 512, attn_dim: int = 128,
                 dropout: float = 0.25, **common):
        super().__init__(in_dim, n_classes, **common)
        E, A = hidden_dim, attn_dim
        self.embed_net = nn.Sequential(nn.Linear(in_dim, E), nn.ReLU(), nn.Dropout(dropout))
        self.attention = nn.Sequential(nn.Linear(E, A, bias=False), nn.ReLU(), nn.Linear(A, 1, bias=False))
        self.classifier = nn.Linear(E, n_classes)
        init_linear_xavier(self)

    def attention_output_layers(self):
        return [self.attention[-1]]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_net(x)                              # (T, E)

    def instance_cache(self, h: torch.Tensor) -> torch.Tensor:
        return self.attention(h).squeeze(-1)                  # (T,) attention logits

    def instance_logits(self, h: torch.Tensor, cache: torch.Tensor | None = None) -> torch.Tensor:
        """``(T, C)``: a bag of one instance has attention 1, so its logits are ``classifier(h_i)``."""
        return self.classifier(h)

    def head(self, h: torch.Tensor, cache: torch.Tensor | None = None) -> dict:
        s = self.instance_cache(h) if cache is None else cache  # (T,)
        a = torch.softmax(s, dim=0)                           # (T,)
        z = a.unsqueeze(0) @ h                                # (1, E)
        return {"logits": self.classifier(z), "scores": a, "embedding": z}

"""Gated attention MIL (Ilse, Tomczak & Welling 2018, "Attention-based deep multiple instance learning").

    embed:      Linear(D, E) -> ReLU -> Dropout                              h: (T, E)
    attention:  s_i = w^T (tanh(V h_i) * sigmoid(U h_i))   V, U: (A, E)       s: (T,)  (instance_cache)
    pooling:    a = softmax(s), z = a @ h                                     z: (1, E)
    classifier: Linear(E, C)
    scores:     a                                                             (T,)  attention weights

The gate ``sigmoid(U h)`` lets the attention branch express non-linear interactions that ``tanh`` alone
cannot (Ilse et al., eq. 9). The plain, non-gated variant is ``abmil``.
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.models.base import MILModel, init_linear_xavier
from trainer.models.common import instance_embedding
from trainer.models.registry import register_model


class GatedAttention(nn.Module):
    """``s = w^T (tanh(V h) * sigmoid(U h))``: one attention logit per instance. ``(T, E) -> (T,)``."""

    def __init__(self, dim: int, attn_dim: int):
        super().__init__()
        self.V = nn.Linear(dim, attn_dim)
        self.U = nn.Linear(dim, attn_dim)
        self.w = nn.Linear(attn_dim, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))).squeeze(-1)   # (T,)


@register_model("abmil-gated")
class GatedABMIL(MILModel):
    attention_pooling = True

    def __init__(self, in_dim: int, n_classes: int, *, hidden_dim: int = 512, attn_dim: int = 128,
                 dropout: float = 0.25, **common):
        super().__init__(in_dim, n_classes, **common)
        self.embed_net = instance_embedding(in_dim, hidden_dim, dropout)
        self.attention = GatedAttention(hidden_dim, attn_dim)
        self.classifier = nn.Linear(hidden_dim, n_classes)
        init_linear_xavier(self)

    def attention_output_layers(self):
        return [self.attention.w]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_net(x)                              # (T, E)

    def instance_cache(self, h: torch.Tensor) -> torch.Tensor:
        return self.attention(h)                              # (T,) attention logits

    def instance_logits(self, h: torch.Tensor, cache: torch.Tensor | None = None) -> torch.Tensor:
        """``(T, C)``: a bag of one instance has attention 1, so its logits are ``classifier(h_i)``."""
        return self.classifier(h)

    def head(self, h: torch.Tensor, cache: torch.Tensor | None = None) -> dict:
        s = self.instance_cache(h) if cache is None else cache   # (T,)
        a = torch.softmax(s, dim=0)                           # (T,)
        z = a.unsqueeze(0) @ h                                # (1, E)
        return {"logits": self.classifier(z), "scores": a, "embedding": z}

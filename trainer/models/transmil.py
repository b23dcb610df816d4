"""TransMIL (Shao et al. 2021, "TransMIL: Transformer based correlated multiple instance learning for
whole slide image classification"), a small version.

    embed:   Linear(D, E) -> ReLU -> Dropout                                h: (T, E)
    head:    [cls; h]                                                       (1 + T, E)
             -> TransLayer -> PPEG -> TransLayer -> LayerNorm               (1 + T, E)
             logits = Linear(E, C)(cls)                                      (1, C)
    scores:  the class token's attention to the T tokens in the last layer, averaged over heads and
             renormalised over the tokens (the class token's weight on itself removed)    (T,)

TransLayer = x + MHSA(LayerNorm(x)) (pre-norm, as TransMIL). PPEG (pyramid position encoding
generator): the T tokens, in store order, are laid out row by row on the smallest n x n grid (n =
ceil(sqrt(T))), padded by repeating the first tokens, and ``x + dwconv7(x) + dwconv5(x) + dwconv3(x)``
is applied; the class token skips it.

Differences from the paper, on purpose:
* exact multi-head self-attention through ``torch.nn.functional.scaled_dot_product_attention`` instead of
  the Nystrom approximation: exact, and on CPU / GPU it runs as a fused (flash / memory-efficient) kernel
  that never stores the (T x T) matrix, so bags of tens of thousands of patches fit; the class-token row
  used for ``scores`` is computed separately, O(T);
* the padding exists only for the PPEG convolution and is removed afterwards (TransMIL keeps the padded
  copies as extra tokens in the second layer), so every score belongs to a real token;
* 8 heads when E is divisible by 8, else the largest divisor of E up to 8; no attention dropout.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.base import MILModel, init_linear_xavier
from trainer.models.common import instance_embedding
from trainer.models.registry import register_model


def n_heads_for(dim: int, wanted: int = 8) -> int:
    return max(h for h in range(1, wanted + 1) if dim % h == 0)


class SelfAttention(nn.Module):
    """Multi-head self-attention over one sequence ``(L, E)``; optionally the row of token 0 (heads-mean)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, want_cls_row: bool = False):
        L, E = x.shape
        q, k, v = self.qkv(x).view(L, 3, self.heads, E // self.heads).permute(1, 2, 0, 3)  # each (H, L, dh)
        y = F.scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0))[0]  # (H, L, dh)
        y = self.proj(y.transpose(0, 1).reshape(L, E))       # (L, E)
        row = None
        if want_cls_row:
            row = torch.softmax(q[:, :1] @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)  # (H, 1, L)
            row = row.mean(0)[0]                              # (L,)
        return y, row


class TransLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)

    def forward(self, x: torch.Tensor, want_cls_row: bool = False):
        y, row = self.attn(self.norm(x), want_cls_row)
        return x + y, row


class PPEG(nn.Module):
    """Depth-wise 7/5/3 convolutions on the square token grid, added to the tokens (conditional position)."""

    def __init__(self, dim: int):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in (7, 5, 3)])

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        T, E = t.shape
        n = max(1, math.ceil(math.sqrt(T)))
        pad = n * n - T
        if pad:                                              # repeat the first tokens to fill the square
            t = torch.cat([t, t[torch.arange(pad, device=t.device) % T]], 0)
        g = t.T.reshape(1, E, n, n)                           # (1, E, n, n), row-major token order
        g = g + sum(conv(g) for conv in self.convs)
        return g.reshape(E, n * n).T[:T]                      # (T, E), padding dropped


@register_model("transmil")
class TransMIL(MILModel):
    def __init__(self, in_dim: int, n_classes: int, *, hidden_dim: int = 512, dropout: float = 0.25, **common):
        super().__init__(in_dim, n_classes, **common)
        E = hidden_dim
        heads = n_heads_for(E)
        self.embed_net = instance_embedding(in_dim, hidden_dim, dropout)
        self.cls_token = nn.Parameter(torch.randn(1, E) * 0.02)
        self.layer1 = TransLayer(E, heads)
        self.ppeg = PPEG(E)
        self.layer2 = TransLayer(E, heads)
        self.norm = nn.LayerNorm(E)
        self.classifier = nn.Linear(E, n_classes)
        init_linear_xavier(self)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_net(x)                              # (T, E)

    def head(self, h: torch.Tensor, cache: torch.Tensor | None = None) -> dict:
        x = torch.cat([self.cls_token, h], 0)                 # (1 + T, E)
        x, _ = self.layer1(x)
        x = torch.cat([x[:1], self.ppeg(x[1:])], 0)           # (1 + T, E)
        x, row = self.layer2(x, want_cls_row=True)            # row: (1 + T,)
        z = self.norm(x[:1])                                  # (1, E)
        scores = row[1:] / row[1:].sum().clamp_min(1e-12)     # (T,)
        return {"logits": self.classifier(z), "scores": scores, "embedding": z}

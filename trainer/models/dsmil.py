"""DSMIL (Li, Li & Eliceiri 2021, "Dual-stream multiple instance learning network for whole slide image
classification with self-supervised contrastive learning"), the MIL aggregator (no SimCLR pre-training).

    embed:           Linear(D, E) -> ReLU -> Dropout                     h: (T, E)
    stream 1:        instance classifier c = Linear(E, C)(h)             c: (T, C)  (instance_cache)
                     max-pooling: max_logits[k] = max_i c_i[k]; the arg-max m_k is the critical instance
    stream 2:        q = tanh(W_q h) (T, Q); v = W_v h (T, E)
                     U[:, k] = softmax_i(<q_i, q_{m_k}> / sqrt(Q))  distance-based attention  (T, C)
                     b = U^T v (C, E); bag_logits = W_b vec(b)       (1, C)   (the paper's 1-D conv over b)
    logits:          (max_logits + bag_logits) / 2                   the paper averages the two streams
    scores:          U[:, k] for the score class (binary: positive)  (T,)  attention weights

    loss = (CE(bag_logits) + CE(max_logits)) / 2
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.base import MILModel, TrainOutput, init_linear_xavier
from trainer.models.common import instance_embedding, score_class
from trainer.models.registry import register_model


@register_model("dsmil")
class DSMIL(MILModel):
    loss_terms = ("ce", "max_ce")    # bag stream, max stream

    def __init__(self, in_dim: int, n_classes: int, *, hidden_dim: int = 512, attn_dim: int = 128,
                 dropout: float = 0.25, **common):
        super().__init__(in_dim, n_classes, **common)
        E, Q = hidden_dim, attn_dim
        self.embed_net = instance_embedding(in_dim, hidden_dim, dropout)
        self.instance_classifier = nn.Linear(E, n_classes)
        self.q = nn.Sequential(nn.Linear(E, Q), nn.Tanh())
        self.v = nn.Linear(E, E)
        self.bag_classifier = nn.Linear(n_classes * E, n_classes)   # = Conv1d(C, C, kernel_size=E)
        init_linear_xavier(self)

    def attention_output_layers(self):
        return [self.q[0]]                                    # q = 0: every distance equal, U uniform

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_net(x)                              # (T, E)

    def instance_cache(self, h: torch.Tensor) -> torch.Tensor:
        return self.instance_classifier(h)                    # (T, C)

    def streams(self, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(max_logits (1, C), bag_logits (1, C), U (T, C))``."""
        C = self.n_classes
        m = c.detach().argmax(0)                              # (C,) critical instance per class
        max_logits = c[m, torch.arange(C, device=c.device)].unsqueeze(0)   # (1, C)
        q = self.q(h)                                         # (T, Q)
        U = torch.softmax(q @ q[m].T / math.sqrt(q.shape[1]), dim=0)        # (T, C)
        b = U.T @ self.v(h)                                   # (C, E)
        bag_logits = self.bag_classifier(b.reshape(1, -1))    # (1, C)
        return max_logits, bag_logits, U

    def head(self, h: torch.Tensor, cache: torch.Tensor | None = None) -> dict:
        c = self.instance_cache(h) if cache is None else cache   # (T, C)
        max_logits, bag_logits, U = self.streams(h, c)
        logits = 0.5 * (max_logits + bag_logits)
        return {"logits": logits, "scores": U[:, score_class(logits)], "max_logits": max_logits,
                "bag_logits": bag_logits, "embedding": (U.T @ h).mean(0, keepdim=True)}

    def instance_logits(self, h: torch.Tensor, cache: torch.Tensor | None = None) -> torch.Tensor:
        """``(T, C)``: the logits of a bag holding only that instance (attention 1 on itself), vectorised."""
        c = self.instance_cache(h) if cache is None else cache   # (T, C)
        C, E = self.n_classes, h.shape[1]
        W = self.bag_classifier.weight.view(C, C, E).sum(1)   # (C, E): b has C identical rows v_i
        bag = self.v(h) @ W.T + self.bag_classifier.bias      # (T, C)
        return 0.5 * (c + bag)

    def train_forward(self, bag) -> TrainOutput:
        y = bag.label.view(1)
        out = self.forward(bag)
        terms = {"ce": F.cross_entropy(out["bag_logits"], y), "max_ce": F.cross_entropy(out["max_logits"], y)}
        return TrainOutput.make(out["logits"], terms, {"ce": 0.5, "max_ce": 0.5})

"""Small pieces shared by the baseline models (the per-instance embedding, the score class)."""
from __future__ import annotations

import torch
from torch import nn


def instance_embedding(in_dim: int, hidden_dim: int, dropout: float) -> nn.Sequential:
    """``Linear(D, E) -> ReLU -> Dropout``: the per-instance network every baseline starts with.

    The same first layer as the reference AB-MIL, so that a comparison between models measures the
    pooling / aggregation and not the width of the embedding.
    """
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))


def score_class(logits: torch.Tensor) -> int:
    """Class whose per-instance score is reported: the positive class (1) for binary tasks, otherwise
    the bag's predicted class. ``logits``: ``(1, C)``."""
    C = logits.shape[-1]
    return 1 if C == 2 else int(logits.detach().argmax(-1).reshape(-1)[0])

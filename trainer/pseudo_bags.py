"""Pseudo-bags (paper 3.4, eq. 6; Algorithm 1): a random partition of a bag's instances into m parts.

Follows Algorithm 1: shuffle the (masked) bag's instances, cut into ``m`` chunks of ``n // m``, the
remainder goes to the last chunk. Every pseudo-bag inherits the slide label. When the bag has fewer
than ``m`` instances, ``n`` single-instance pseudo-bags are made (no empty pseudo-bag).
"""
from __future__ import annotations

import torch


def pseudo_bag_indices(n: int, m: int, generator: torch.Generator | None = None,
                       device=None) -> list[torch.Tensor]:
    """Split ``range(n)`` into ``min(m, n)`` disjoint random index sets that cover it exactly.

    Args:
        n: number of instances (> 0).
        m: number of pseudo-bags requested.

    Returns:
        List of ``(n_i,)`` int64 index tensors; sizes ``n // m`` except the last, which takes the rest.
    """
    if n <= 0:
        return []
    m = max(1, min(m, n))
    perm = torch.randperm(n, generator=generator).to(device)
    size = n // m
    return [perm[i * size:(i + 1) * size] if i < m - 1 else perm[i * size:] for i in range(m)]

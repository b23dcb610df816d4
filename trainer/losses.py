"""SAM-MIL's consistency loss (paper eq. 12 / appendix F), in O(n) without any n x n matrix.

Which form, and why
-------------------
The paper gives two descriptions that disagree:

* eq. 12: ``L = sum_i sum_j sim(attn_i, attn_j) * (1 - delta(s_i, s_j))`` sums a *similarity* over pairs
  in *different* segments, i.e. it pushes apart the attention of patches from different segments, and
  says nothing about patches of the same segment;
* appendix F (and Fig. 7): "within each category group, we independently calculate the consistency
  loss ... the variance of attention weights among patches within the group ... Subsequently we sum
  the consistency losses of all groups".

We implement appendix F (the issue asks for it, the text around eq. 12 states the premise "attention
weights within the same segmentation category ought to be more similar", and the reference code also
measures within-segment dispersion). Default form ``variance``::

    x_i   = T * a_i                      (a = softmax attention over the FULL bag of T tokens, so that
                                          uniform attention is x = 1 whatever the bag size)
    L_con = sum_k Var_{i in G_k}(x_i) = sum_k 1/(2 n_k^2) sum_{i,j in G_k} (x_i - x_j)^2

summed over segments (groups with n_k >= 2; unassigned patches and group tokens excluded unless
asked). Computed with two segment-sums (mean, then squared deviations: the identity
``sum_ij (x_i-x_j)^2 = 2 n sum x_i^2 - 2 (sum x_i)^2`` in its numerically stable two-pass form), O(T).

``reference-l2`` reproduces the reference code's formula on raw attention, again in O(n):
``mean over tokens of sqrt(sum_{j in G(i)} (a_i - a_j)^2)`` with
``sum_j (a_i - a_j)^2 = n_k ((a_i - m_k)^2 + Var_k)``.
"""
from __future__ import annotations

import torch


def _segment_moments(x: torch.Tensor, group: torch.Tensor, n_groups: int):
    """Per-group count, mean and population variance of ``x`` (float64). ``group`` must be >= 0."""
    x64 = x.double()
    n = torch.bincount(group, minlength=n_groups).double()
    s1 = torch.zeros(n_groups, dtype=torch.float64, device=x.device).index_add(0, group, x64)
    mean = s1 / n.clamp_min(1)
    dev = x64 - mean[group]
    var = torch.zeros(n_groups, dtype=torch.float64, device=x.device).index_add(0, group, dev * dev) / n.clamp_min(1)
    return n, mean, var, dev


def _kept(x: torch.Tensor, group: torch.Tensor, n_groups: int | None):
    """Drop entries with ``group < 0``; return ``(x, group, G)`` (G = number of groups)."""
    keep = group >= 0
    x, group = x[keep], group[keep]
    G = n_groups if n_groups is not None else (int(group.max()) + 1 if group.numel() else 0)
    return x, group, G


def segment_variance_loss(x: torch.Tensor, group: torch.Tensor, n_groups: int | None = None) -> torch.Tensor:
    """``sum_k Var_{i in G_k}(x_i)`` over groups with >= 2 members; entries with ``group < 0`` ignored.

    Args:
        x: ``(T,)`` values (e.g. scaled attention).
        group: ``(T,)`` int64 group index, -1 = excluded.
    """
    x, group, G = _kept(x, group, n_groups)
    if x.numel() == 0:
        return x.sum() * 0.0
    n, _, var, _ = _segment_moments(x, group, G)
    return var[n >= 2].sum().to(x.dtype)


def reference_l2_loss(x: torch.Tensor, group: torch.Tensor, n_groups: int | None = None) -> torch.Tensor:
    """The reference code's ``mean_i sqrt(sum_{j in G(i)} (x_i - x_j)^2)`` over groups with >= 2 members."""
    x, group, G = _kept(x, group, n_groups)
    if x.numel() == 0:
        return x.sum() * 0.0
    n, _, var, dev = _segment_moments(x, group, G)
    big = n[group] >= 2
    if not bool(big.any()):
        return x.sum() * 0.0
    sq = n[group] * (dev * dev + var[group])          # sum_j (x_i - x_j)^2 for every token i
    d = torch.sqrt(sq[big].clamp_min(1e-30))
    return (d.sum() / big.sum()).to(x.dtype)


def consistency_loss(attention: torch.Tensor, group: torch.Tensor, form: str = "variance",
                     n_groups: int | None = None) -> torch.Tensor:
    """L_con on the full bag's softmax attention ``(T,)`` with token groups ``(T,)`` (-1 = excluded)."""
    if form == "variance":
        return segment_variance_loss(attention * attention.shape[0], group, n_groups)
    if form == "reference-l2":
        return reference_l2_loss(attention, group, n_groups)
    raise ValueError(f"unknown consistency form {form!r}")

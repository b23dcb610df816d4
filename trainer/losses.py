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

We implement appendix F (the text around eq. 12 states the premise "attention weights within the same
segmentation category ought to be more similar", and the reference code also measures within-segment
dispersion). Three forms are available (``--con-form``).

Default form ``within-share`` (size-invariant)::

    s_i   = log a_i                      (log attention: the attention logit up to a constant shared by
                                          the whole bag, so any backbone's softmax attention works)
    L_con = sum_k sum_{i in G_k} (s_i - mean_k s)^2  /  (sum_{i in S} (s_i - mean_S s)^2 + eps)

over the patches ``S`` that lie in a segment (groups with >= 2 members; unassigned patches and group
tokens excluded unless asked). It is the share of the log-attention variance that lies *within*
segments (``1 - eta^2``, the correlation ratio's complement), a number in ``[0, 1]``:

* it does not grow with the bag: the same attention pattern on 300 or 30,000 patches gives the same
  value (logits do not shrink like ``1/T``, and both sums scale with the number of patches);
* it does not grow with the number of segments: splitting every segment into two identical halves
  leaves both sums unchanged;
* it is 0 when attention is uniform inside every segment, and it is unchanged when all logits are
  multiplied by a constant, so it cannot be lowered by flattening attention over the whole bag: only by
  moving attention differences *between* segments, which is the paper's premise.

``beta * L_con`` is therefore at most ``beta`` whatever the slide, so one value of beta means the same
thing on a 300-patch demo bag and a 50,000-patch resection.

Form ``variance`` (the earlier default, kept for comparison; it grows with the bag and the number of
segments)::

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


def within_share_loss(s: torch.Tensor, group: torch.Tensor, n_groups: int | None = None,
                      eps: float = 1e-8) -> torch.Tensor:
    """Share of the variance of ``s`` that lies within groups: ``sum_k n_k Var_k(s) / (n Var(s) + eps)``.

    Only entries with ``group >= 0`` in groups of >= 2 members count (in both sums). In ``[0, 1]``.

    Args:
        s: ``(T,)`` values (log attention).
        group: ``(T,)`` int64 group index, -1 = excluded.
    """
    s, group, G = _kept(s, group, n_groups)
    if s.numel() == 0:
        return s.sum() * 0.0
    n = torch.bincount(group, minlength=G)
    big = n[group] >= 2
    s, group = s[big], group[big]
    if s.numel() < 2:
        return s.sum() * 0.0
    _, _, var, dev = _segment_moments(s, group, G)
    within = (dev * dev).sum()                                # sum_k n_k Var_k
    s64 = s.double()
    total = ((s64 - s64.mean()) ** 2).sum()                   # n Var over the kept patches
    return (within / (total + eps * s.numel())).to(s.dtype)


def consistency_loss(attention: torch.Tensor, group: torch.Tensor, form: str = "within-share",
                     n_groups: int | None = None) -> torch.Tensor:
    """L_con on the full bag's softmax attention ``(T,)`` with token groups ``(T,)`` (-1 = excluded)."""
    if form == "within-share":
        tiny = torch.finfo(attention.dtype).tiny                # only exact zeros (underflow) are clamped
        return within_share_loss(torch.log(attention.clamp_min(tiny)), group, n_groups)
    if form == "variance":
        return segment_variance_loss(attention * attention.shape[0], group, n_groups)
    if form == "reference-l2":
        return reference_l2_loss(attention, group, n_groups)
    raise ValueError(f"unknown consistency form {form!r}")

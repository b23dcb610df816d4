"""SAM-Guided Group Masking (SG2M, paper 3.3) and the Table-3 ablation masks, as pure functions.

Token layout of a bag: ``[patch_0 .. patch_{N-1}, group_0 .. group_{S-1}]`` (group tokens only with
group features on). Masking returns the sorted indices of the tokens that are KEPT.

Groups for SG2M are the slide's segments; patches in no segment form one extra group (index S). Group
k is masked at ``MR * R(A_k)`` and exactly ``floor(n_k * MR * R(A_k))`` of its patches are dropped,
chosen uniformly at random. Group-feature tokens are never masked.

Area unit ``A_k`` (size-independent by default):
    * ``relative-size`` (default): ``n_k / mean_j n_j``, the segment's patch count relative to the mean
      segment of the same slide (1 = an average segment). Default ``a = 2, b = -2``: ``R(0) = 0.12``,
      ``R(0.5) = 0.27``, ``R(1) = 0.5``, ``R(2) = 0.88``, so small segments keep most of their patches,
      average ones lose about half of ``MR``, and large ones nearly all of it, on every slide whatever its
      number of segments. (With ``patch-fraction`` and a fixed centre at 1 % of the slide, most segments of
      a slide cut into 10-40 segments lie above the centre and SG2M degenerates into a near-constant mask.)
      The unassigned group gets area 0.
    * ``patch-fraction``: ``n_k / N``, the share of the slide's patches in the segment (= the
      share of patch-covered tissue). The unassigned group gets area 0 (the reference gives it 1 SAM
      pixel, i.e. the smallest ratio). Default ``a = 250, b = -2.5``: centre at 1 % of the slide,
      ``R(0) = 0.076`` (same as the reference at A = 0), ``R(2 %) = 0.92``.
    * ``sam-pixels``: the reference code's unit (mask area in SAM-input-image pixels, the store's
      ``segment_sam_area``; unassigned = 1), with ``a = 5e-4, b = -2.5`` (k = 5e-4, A0 = 5000). This unit
      depends on each slide's SAM downsample, so the same tissue area gives different ratios on
      different slides.

Grouping ``sam-area`` reproduces the reference exactly: patches with equal ``patch_sam_area`` form one
group (two segments of identical pixel area merge; all unassigned patches share the value 1).

Ratio functions (paper Table 4; the paper gives only the sigmoid's formula):
    constant ``R = 1``; linear ``R = A / max_k A_k`` (per slide, the unassigned group excluded from the
    max); sigmoid ``R = 1 / (1 + exp(-(a A + b)))`` (eq. 7).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

NONE, RANDOM, NON_GROUP, SAM = "none", "random", "non-group", "sam"


@dataclass
class MaskGroups:
    """Patch grouping for SG2M and the consistency loss.

    Attributes:
        group_of_patch: ``(N,)`` int64 in 0..G-1.
        area: ``(G,)`` float64 group area in the chosen unit.
        is_segment: ``(G,)`` bool, False for the unassigned-patches group.
    """

    group_of_patch: torch.Tensor
    area: torch.Tensor
    is_segment: torch.Tensor

    @property
    def n_groups(self) -> int:
        return int(self.area.shape[0])


def mask_groups(segment_ids: torch.Tensor, segment_sizes: torch.Tensor, segment_sam_area: torch.Tensor,
                patch_sam_area: torch.Tensor, *, area_unit: str = "patch-fraction",
                group_by: str = "segment") -> MaskGroups:
    """Group a slide's patches for masking (see module doc for the units)."""
    N = segment_ids.shape[0]
    dev = segment_ids.device
    if group_by == "sam-area":
        values, inv = torch.unique(patch_sam_area, return_inverse=True)
        counts = torch.bincount(inv, minlength=values.shape[0]).double()
        area = values.double() if area_unit == "sam-pixels" else counts / max(N, 1)
        is_seg = values > 1  # the reference writes 1 for "in no mask"
        if area_unit != "sam-pixels":
            area = torch.where(is_seg, area, torch.zeros_like(area))
        return MaskGroups(inv.long(), area, is_seg)
    S = segment_sizes.shape[0]
    gid = torch.where(segment_ids < 0, torch.full_like(segment_ids, S), segment_ids).long()
    if area_unit == "sam-pixels":
        area = torch.cat([segment_sam_area.double().to(dev), torch.ones(1, dtype=torch.float64, device=dev)])
    elif area_unit == "relative-size":
        sizes = segment_sizes.double().to(dev)
        mean = sizes[sizes > 0].mean() if bool((sizes > 0).any()) else sizes.new_tensor(1.0)
        area = torch.cat([sizes / mean, torch.zeros(1, dtype=torch.float64, device=dev)])
    else:
        area = torch.cat([segment_sizes.double().to(dev) / max(N, 1),
                          torch.zeros(1, dtype=torch.float64, device=dev)])
    is_seg = torch.cat([torch.ones(S, dtype=torch.bool, device=dev), torch.zeros(1, dtype=torch.bool, device=dev)])
    return MaskGroups(gid, area, is_seg)


def group_ratios(area: torch.Tensor, is_segment: torch.Tensor, fn: str = "sigmoid", a: float = 250.0,
                 b: float = -2.5) -> torch.Tensor:
    """Normalised ratio ``R_k`` in [0, 1] per group (paper eq. 7 for ``sigmoid``)."""
    area = area.double()
    if fn == "constant":
        return torch.ones_like(area)
    if fn == "linear":
        seg = area[is_segment]
        top = seg.max() if seg.numel() else area.max() if area.numel() else area.new_tensor(1.0)
        return (area / top.clamp_min(1e-12)).clamp(0.0, 1.0)
    if fn == "sigmoid":
        return torch.sigmoid(a * area + b)
    raise ValueError(f"unknown ratio function {fn!r}")


def drop_per_group(group_of_patch: torch.Tensor, ratios: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop exactly ``floor(n_k * ratios[k])`` patches of each group, uniformly at random. O(N log N).

    Args:
        group_of_patch: ``(N,)`` int64 group index per patch.
        ratios: ``(G,)`` mask ratio per group (already multiplied by MR).
        generator: optional torch generator (default: the global RNG).

    Returns:
        ``(N,)`` bool, True = dropped.
    """
    N = group_of_patch.shape[0]
    dev = group_of_patch.device
    if N == 0:
        return torch.zeros(0, dtype=torch.bool, device=dev)
    G = ratios.shape[0]
    counts = torch.bincount(group_of_patch, minlength=G)
    n_drop = torch.floor(counts.double() * ratios.double().to(dev) + 1e-9).long()
    # random order inside each group: sort by a random key, then stable-sort by group
    u = torch.rand(N, generator=generator, device="cpu" if generator is None else generator.device).to(dev)
    perm = torch.argsort(u)
    perm = perm[torch.argsort(group_of_patch[perm], stable=True)]
    g_sorted = group_of_patch[perm]
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(N, device=dev) - start[g_sorted]
    drop = torch.empty(N, dtype=torch.bool, device=dev)
    drop[perm] = rank < n_drop[g_sorted]
    return drop


def random_drop(n: int, ratio: float, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """``(n,)`` bool with exactly ``floor(n * ratio)`` True entries at random positions."""
    k = int(n * ratio + 1e-9)
    drop = torch.zeros(n, dtype=torch.bool, device=device)
    if k:
        drop[torch.randperm(n, generator=generator)[:k].to(device)] = True
    return drop


def keep_index(mode: str, n_patches: int, n_group_tokens: int, *, mask_ratio: float = 0.9,
               groups: MaskGroups | None = None, ratios: torch.Tensor | None = None,
               generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Sorted indices of the kept tokens for one mask mode (paper Table 3).

    Args:
        mode: ``none`` (keep all), ``random`` (drop ``floor(T * MR)`` of all T tokens, group tokens
            included), ``non-group`` (drop ``floor(N * MR)`` patches, keep group tokens), ``sam`` (SG2M;
            needs ``groups`` and ``ratios`` = per-group ``R_k``; keeps group tokens).
    """
    T = n_patches + n_group_tokens
    if mode == NONE:
        return torch.arange(T, device=device)
    if mode == RANDOM:
        drop = random_drop(T, mask_ratio, generator, device)
    elif mode == NON_GROUP:
        drop = torch.cat([random_drop(n_patches, mask_ratio, generator, device),
                          torch.zeros(n_group_tokens, dtype=torch.bool, device=device)])
    elif mode == SAM:
        if groups is None or ratios is None:
            raise ValueError("mode 'sam' needs groups and ratios")
        drop = torch.cat([drop_per_group(groups.group_of_patch.to(device), mask_ratio * ratios, generator),
                          torch.zeros(n_group_tokens, dtype=torch.bool, device=device)])
    else:
        raise ValueError(f"unknown mask mode {mode!r}")
    return torch.nonzero(~drop).flatten()


class SG2M(nn.Module):
    """Thin module around :func:`keep_index` holding the masking configuration (no parameters)."""

    def __init__(self, mode: str = SAM, mask_ratio: float = 0.9, ratio_fn: str = "sigmoid", a: float = 250.0,
                 b: float = -2.5, area_unit: str = "patch-fraction", group_by: str = "segment"):
        super().__init__()
        self.mode, self.mask_ratio, self.ratio_fn = mode, mask_ratio, ratio_fn
        self.a, self.b, self.area_unit, self.group_by = a, b, area_unit, group_by

    def groups(self, bag) -> MaskGroups:
        return mask_groups(bag.segment_ids, bag.segment_sizes, bag.segment_sam_area, bag.patch_sam_area,
                           area_unit=self.area_unit, group_by=self.group_by)

    def forward(self, bag, n_group_tokens: int, groups: MaskGroups | None = None,
                scale: float = 1.0) -> torch.Tensor:
        """Kept token indices for ``bag`` (group tokens, if any, follow the patches).

        ``scale`` in [0, 1] multiplies MR_target (the warm-up ramp of SAM-MIL); 0 keeps every token.
        """
        dev = bag.features.device
        if self.mode == NONE or scale <= 0:
            return torch.arange(bag.n_patches + n_group_tokens, device=dev)
        mr = self.mask_ratio * float(scale)
        if self.mode != SAM:
            return keep_index(self.mode, bag.n_patches, n_group_tokens, mask_ratio=mr, device=dev)
        groups = groups if groups is not None else self.groups(bag)
        ratios = group_ratios(groups.area, groups.is_segment, self.ratio_fn, self.a, self.b)
        return keep_index(SAM, bag.n_patches, n_group_tokens, mask_ratio=mr, groups=groups,
                          ratios=ratios, device=dev)

    def extra_repr(self) -> str:
        return (f"mode={self.mode}, MR={self.mask_ratio}, ratio_fn={self.ratio_fn}, a={self.a}, b={self.b}, "
                f"unit={self.area_unit}, group_by={self.group_by}")


def ratio_spread(reader, slide_ids, cfg) -> dict:
    """How SG2M's per-segment mask ratios ``MR * R(A_k)`` spread over a cohort's segments.

    Returns quantiles (p10, p50, p90) over segments, the share of segments masked above 0.8, and the
    expected share of patches dropped per slide (mean over slides). A near-constant ratio means SG2M
    behaves like uniform random masking; see ``--area-unit``.
    """
    import numpy as np

    ratios, dropped = [], []
    for sid in slide_ids:
        arr = {n: torch.from_numpy(np.asarray(reader.read_array(sid, n)))
               for n in ("segment_ids", "segment_sizes", "segment_sam_area", "patch_sam_area")}
        g = mask_groups(arr["segment_ids"].long(), arr["segment_sizes"].long(), arr["segment_sam_area"].double(),
                        arr["patch_sam_area"].double(), area_unit=cfg.area_unit, group_by=cfg.group_by)
        r = cfg.mask_ratio * group_ratios(g.area, g.is_segment, cfg.ratio_fn, cfg.sigmoid_a, cfg.sigmoid_b)
        counts = torch.bincount(g.group_of_patch, minlength=g.n_groups).double()
        ratios.append(r[g.is_segment].numpy())
        if counts.sum() > 0:
            dropped.append(float((counts * r).sum() / counts.sum()))
    allr = np.concatenate(ratios) if ratios else np.zeros(0)
    if not len(allr):
        return {"n_segments": 0}
    p10, p50, p90 = np.percentile(allr, [10, 50, 90])
    return {"n_segments": int(len(allr)), "p10": float(p10), "p50": float(p50), "p90": float(p90),
            "share_above_0.8": float((allr > 0.8).mean()), "mean_patch_share_dropped": float(np.mean(dropped)),
            "area_unit": cfg.area_unit, "sigmoid_a": cfg.sigmoid_a, "sigmoid_b": cfg.sigmoid_b,
            "ratio_fn": cfg.ratio_fn, "mask_ratio": cfg.mask_ratio}

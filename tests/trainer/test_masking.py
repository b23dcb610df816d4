import math

import pytest
import torch

from trainer.masking import SG2M, drop_per_group, group_ratios, keep_index, mask_groups


def test_drop_counts_are_floor_n_times_ratio_per_group():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        G = int(torch.randint(1, 12, (1,), generator=g))
        group = torch.randint(0, G, (int(torch.randint(1, 400, (1,), generator=g)),), generator=g)
        ratios = torch.rand(G, generator=g, dtype=torch.float64) * 0.95
        drop = drop_per_group(group, ratios, generator=g)
        for k in range(G):
            n_k = int((group == k).sum())
            assert int(drop[group == k].sum()) == math.floor(n_k * float(ratios[k])), (trial, k)


def test_drop_is_uniform_within_group():
    group = torch.zeros(10, dtype=torch.long)
    g = torch.Generator().manual_seed(1)
    freq = torch.stack([drop_per_group(group, torch.tensor([0.5]), generator=g) for _ in range(2000)]).float().mean(0)
    assert torch.all((freq - 0.5).abs() < 0.06), freq


def _bag(seg, S, sam_area=None):
    class B:  # minimal bag
        pass
    b = B()
    b.segment_ids = torch.tensor(seg)
    b.segment_sizes = torch.bincount(b.segment_ids[b.segment_ids >= 0], minlength=S)
    b.segment_sam_area = torch.tensor(sam_area if sam_area is not None else [0] * S, dtype=torch.float64)
    psa = torch.ones(len(seg), dtype=torch.float64)
    psa[b.segment_ids >= 0] = b.segment_sam_area[b.segment_ids[b.segment_ids >= 0]]
    b.patch_sam_area = psa
    b.features = torch.zeros(len(seg), 4)
    b.n_patches = len(seg)
    return b


def test_groups_unassigned_is_own_group_with_zero_area():
    b = _bag([0, 0, 1, -1, -1, 1, 1, 0, 0, 0], S=2)
    mg = mask_groups(b.segment_ids, b.segment_sizes, b.segment_sam_area, b.patch_sam_area)
    assert mg.group_of_patch.tolist() == [0, 0, 1, 2, 2, 1, 1, 0, 0, 0]
    assert mg.area.tolist() == [0.5, 0.3, 0.0]
    assert mg.is_segment.tolist() == [True, True, False]


def test_reference_grouping_merges_equal_sam_areas():
    b = _bag([0, 1, 2, -1], S=3, sam_area=[70, 70, 90])
    mg = mask_groups(b.segment_ids, b.segment_sizes, b.segment_sam_area, b.patch_sam_area,
                     area_unit="sam-pixels", group_by="sam-area")
    assert mg.n_groups == 3                       # areas {1, 70, 90}: segments 0 and 1 merge
    assert mg.group_of_patch[0] == mg.group_of_patch[1] != mg.group_of_patch[2]
    assert mg.area.tolist() == [1.0, 70.0, 90.0]


def test_sigmoid_ratios_match_reference_and_default_unit():
    # reference: MR 0.9, k 5e-4, A0 5000 -> A=5000: 45 %, A=1: 6.8 %, A=20000: 90 %
    r = 0.9 * group_ratios(torch.tensor([5000.0, 1.0, 20000.0]), torch.ones(3, dtype=torch.bool), "sigmoid",
                           5e-4, -2.5)
    assert r.tolist() == pytest.approx([0.45, 0.0680, 0.8994], abs=5e-4)
    # default unit: share of patches; R(0) = sigmoid(-2.5), R(1 %) = 0.5
    r = group_ratios(torch.tensor([0.0, 0.01]), torch.ones(2, dtype=torch.bool), "sigmoid", 250.0, -2.5)
    assert r.tolist() == pytest.approx([1 / (1 + math.exp(2.5)), 0.5])
    assert group_ratios(torch.tensor([1.0, 3.0, 9.0]), torch.tensor([True, True, False]), "linear").tolist() == \
        pytest.approx([1 / 3, 1.0, 1.0])
    assert group_ratios(torch.tensor([1.0, 3.0]), torch.ones(2, dtype=torch.bool), "constant").tolist() == [1, 1]


@pytest.mark.parametrize("mode", ["sam", "non-group", "none"])
def test_group_tokens_always_kept(mode):
    torch.manual_seed(0)
    seg = [0] * 50 + [1] * 30 + [-1] * 20
    b = _bag(seg, S=2)
    keep = SG2M(mode, mask_ratio=0.9, ratio_fn="constant")(b, n_group_tokens=2)
    assert {100, 101} <= set(keep.tolist())
    if mode == "sam":   # constant ratio 0.9 per group: floor(50*.9)+floor(30*.9)+floor(20*.9) = 45+27+18 dropped
        assert keep.numel() == 102 - 90
    if mode == "non-group":
        assert keep.numel() == 102 - 90
    if mode == "none":
        assert keep.tolist() == list(range(102))
    assert torch.all(keep[1:] > keep[:-1])      # sorted, unique


def test_random_mode_masks_all_tokens_at_mr():
    torch.manual_seed(0)
    keeps = [keep_index("random", 90, 10, mask_ratio=0.5) for _ in range(200)]
    assert all(k.numel() == 50 for k in keeps)
    # group tokens are masked too in the "full-feature" random mask
    assert any(not ({90, 91, 92} <= set(k.tolist())) for k in keeps)


def test_relative_size_unit_is_size_over_the_slides_mean_segment():
    b = _bag([0] * 10 + [1] * 20 + [2] * 30 + [-1] * 5, S=3)
    mg = mask_groups(b.segment_ids, b.segment_sizes, b.segment_sam_area, b.patch_sam_area, area_unit="relative-size")
    assert mg.area.tolist() == pytest.approx([0.5, 1.0, 1.5, 0.0])
    # default a = 2, b = -2: R(1) = 0.5 at the mean segment
    r = group_ratios(mg.area, mg.is_segment, "sigmoid", 2.0, -2.0)
    assert r.tolist() == pytest.approx([1 / (1 + math.exp(1.0)), 0.5, 1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(2.0))])


class _Reader:
    """Minimal stand-in for a store reader: the four SG2M arrays of a few slides."""

    def __init__(self, slides):
        self.slides = slides

    def read_array(self, sid, name):
        import numpy as np

        seg = np.asarray(self.slides[sid], np.int32)
        S = int(seg.max()) + 1
        sizes = np.bincount(seg[seg >= 0], minlength=S).astype(np.int64)
        return {"segment_ids": seg, "segment_sizes": sizes, "segment_sam_area": sizes * 10,
                "patch_sam_area": np.where(seg >= 0, sizes[np.maximum(seg, 0)] * 10, 1)}[name]


def test_ratio_spread_values_and_default_unit_spreads_over_segment_sizes():
    import numpy as np

    from trainer.config import TrainConfig
    from trainer.masking import ratio_spread

    rng = np.random.default_rng(0)
    slides = {}
    for j in range(4):                                   # 20 segments of log-normal sizes per slide
        sizes = np.maximum(2, rng.lognormal(4.0, 0.9, 20).astype(int))
        slides[f"s{j}"] = np.concatenate([np.repeat(np.arange(20), sizes), -np.ones(30, int)])
    reader = _Reader(slides)
    cfg = TrainConfig(store="x", out="y").resolve()      # defaults: relative-size, a = 2, b = -2, MR 0.9
    sp = ratio_spread(reader, list(slides), cfg)
    # recompute by hand
    allr, dropped = [], []
    for seg in slides.values():
        sizes = np.bincount(seg[seg >= 0])
        r = 0.9 / (1 + np.exp(-(2.0 * sizes / sizes.mean() - 2.0)))
        allr.append(r)
        n_un = (seg < 0).sum()
        dropped.append(((sizes * r).sum() + n_un * 0.9 / (1 + np.exp(2.0))) / len(seg))
    allr = np.concatenate(allr)
    assert sp["n_segments"] == 80
    assert sp["p50"] == pytest.approx(np.percentile(allr, 50))
    assert sp["share_above_0.8"] == pytest.approx((allr > 0.8).mean())
    assert sp["mean_patch_share_dropped"] == pytest.approx(np.mean(dropped))
    assert sp["p90"] - sp["p10"] > 0.4                   # a real spread over segment sizes
    # the older unit (share of the slide, centre at 1 %) masks nearly every segment above 0.8
    old = ratio_spread(reader, list(slides), TrainConfig(store="x", out="y", area_unit="patch-fraction").resolve())
    assert old["share_above_0.8"] > 0.7 and sp["share_above_0.8"] < 0.3

import time

import pytest
import torch

from trainer.losses import consistency_loss, reference_l2_loss, segment_variance_loss


def brute_variance(x, group):
    tot = 0.0
    for k in set(group.tolist()) - {-1}:
        v = x[group == k].double()
        n = v.numel()
        if n >= 2:
            tot += float(((v[:, None] - v[None, :]) ** 2).sum()) / (2 * n * n)
    return tot


def brute_l2(x, group):
    num, cnt = 0.0, 0
    for k in set(group.tolist()) - {-1}:
        v = x[group == k].double()
        if v.numel() >= 2:
            num += float(torch.linalg.norm(v[:, None] - v[None, :], dim=1).sum())
            cnt += v.numel()
    return num / cnt


def test_zero_for_uniform_within_every_segment():
    group = torch.tensor([0, 0, 0, 1, 1, -1, 2])
    att = torch.tensor([0.1, 0.1, 0.1, 0.3, 0.3, 0.05, 0.05])
    assert float(consistency_loss(att, group)) == 0.0
    assert float(consistency_loss(att, group, "reference-l2")) == pytest.approx(0.0, abs=1e-12)
    att2 = att.clone()
    att2[0] += 0.01
    assert float(consistency_loss(att2, group)) > 0
    assert float(consistency_loss(att2, group, "reference-l2")) > 0


def test_equals_bruteforce_pairwise():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.rand(60, generator=g, dtype=torch.float64)
        group = torch.randint(-1, 4, (60,), generator=g)
        assert float(segment_variance_loss(x, group)) == pytest.approx(brute_variance(x, group), rel=1e-10)
        assert float(reference_l2_loss(x, group)) == pytest.approx(brute_l2(x, group), rel=1e-10)
    a = torch.softmax(torch.randn(40, generator=g, dtype=torch.float64), 0)
    grp = torch.randint(0, 3, (40,), generator=g)
    assert float(consistency_loss(a, grp, "variance")) == pytest.approx(brute_variance(a * 40, grp), rel=1e-10)


def test_linear_time_on_one_huge_segment():
    # an n x n matrix for 200k tokens would need 320 GB; the O(n) form takes milliseconds
    x = torch.rand(200_000, requires_grad=True)
    group = torch.zeros(200_000, dtype=torch.long)
    t = time.perf_counter()
    loss = consistency_loss(torch.softmax(x, 0), group)
    loss.backward()
    assert time.perf_counter() - t < 2.0
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ---------------------------------------------------------------- the size-invariant default (within-share)

def _pattern(n_per_seg: int, seed: int = 0):
    """Attention logits of 10 segments: a per-segment level, in-segment noise, a 10-patch lesion spike in
    segment 0. Returns (logits (T,), group (T,)) with the lesion block first."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.randn(10, generator=g, dtype=torch.float64)
    logits, group = [], []
    for k in range(10):
        v = levels[k] + 0.3 * torch.randn(n_per_seg, generator=g, dtype=torch.float64)
        if k == 0:
            v[:10] += 4.0
        logits.append(v)
        group.append(torch.full((n_per_seg,), k))
    return torch.cat(logits), torch.cat(group)


def _replicate(logits, group, times):
    return logits.repeat(times), group.repeat(times)


def test_within_share_does_not_grow_with_the_bag():
    logits, group = _pattern(30)                                     # T = 300
    vals, old = [], []
    for times in (1, 10, 100):                                      # T = 300, 3k, 30k
        x, gr = _replicate(logits, group, times)
        a = torch.softmax(x, 0)
        vals.append(float(consistency_loss(a, gr)))
        old.append(float(consistency_loss(a, gr, "variance")))
    assert vals[0] > 0.05
    for v in vals[1:]:
        assert v == pytest.approx(vals[0], rel=0.10)
    assert old[2] == pytest.approx(old[0], rel=0.10)


def test_within_share_is_bounded_where_the_variance_form_explodes():
    # a fixed lesion of 10 patches holding half of the attention, inside one of 10 equal segments
    new, old = [], []
    for T in (300, 3000, 30000):
        group = torch.arange(T) % 10
        logits = torch.zeros(T, dtype=torch.float64)
        lesion = torch.arange(0, 100, 10)                            # 10 patches of segment 0
        logits[lesion] = torch.log(torch.tensor((T - 10) / 10.0, dtype=torch.float64))
        a = torch.softmax(logits, 0)
        assert float(a[lesion].sum()) == pytest.approx(0.5)
        new.append(float(consistency_loss(a, group)))
        old.append(float(consistency_loss(a, group, "variance")))
    assert old[2] > 50 * old[0]                                     # grows ~ T (what the default fixes)
    assert all(0.0 < v <= 1.0 for v in new)


def test_within_share_unchanged_when_every_segment_is_split_in_two_identical_halves():
    logits, group = _pattern(30)
    a = torch.softmax(torch.cat([logits, logits]), 0)
    one = torch.cat([group, group])                                  # each segment = both copies
    two = torch.cat([2 * group, 2 * group + 1])                      # each copy is its own segment
    v1, v2 = float(consistency_loss(a, one)), float(consistency_loss(a, two))
    assert v1 > 0.05 and v2 == pytest.approx(v1, rel=0.10)


def test_within_share_bounds_and_values():
    group = torch.tensor([0, 0, 0, 1, 1, -1, 2, 2])
    # uniform within every segment (levels differ between segments): 0
    a = torch.softmax(torch.tensor([1.0, 1.0, 1.0, -2.0, -2.0, 5.0, 0.5, 0.5]), 0)
    assert float(consistency_loss(a, group)) == pytest.approx(0.0, abs=1e-9)
    # all variance inside segments (segment means equal): 1
    s = torch.tensor([0.0, 1.0, 2.0, 0.0, 2.0, 7.0, 1.5, 0.5], dtype=torch.float64)
    a = torch.softmax(s, 0)
    assert float(consistency_loss(a, group)) == pytest.approx(1.0, rel=1e-6)
    # a hand-computed mix: segments {0,1,2}, {3,4}; unassigned excluded
    s = torch.tensor([0.0, 2.0, 4.0, 10.0, 10.0, 99.0], dtype=torch.float64)
    g = torch.tensor([0, 0, 0, 1, 1, -1])
    within = (4 + 0 + 4) + 0
    m = (0 + 2 + 4 + 10 + 10) / 5
    total = sum((v - m) ** 2 for v in (0, 2, 4, 10, 10))
    assert float(consistency_loss(torch.softmax(s, 0), g)) == pytest.approx(within / total, rel=1e-6)
    # invariant to scaling all logits: it cannot be lowered by flattening attention over the whole bag
    assert float(consistency_loss(torch.softmax(3 * s, 0), g)) == pytest.approx(within / total, rel=1e-6)

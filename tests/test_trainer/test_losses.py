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
    assert float(consistency_loss(a, grp)) == pytest.approx(brute_variance(a * 40, grp), rel=1e-10)


def test_linear_time_on_one_huge_segment():
    # an n x n matrix for 200k tokens would need 320 GB; the O(n) form takes milliseconds
    x = torch.rand(200_000, requires_grad=True)
    group = torch.zeros(200_000, dtype=torch.long)
    t = time.perf_counter()
    loss = consistency_loss(torch.softmax(x, 0), group)
    loss.backward()
    assert time.perf_counter() - t < 2.0
    assert x.grad is not None and torch.isfinite(x.grad).all()

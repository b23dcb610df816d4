import torch

from trainer.pseudo_bags import pseudo_bag_indices


def test_pseudo_bags_partition_exactly():
    g = torch.Generator().manual_seed(0)
    for n, m in [(103, 5), (5, 5), (3, 5), (1, 5), (50, 1)]:
        parts = pseudo_bag_indices(n, m, generator=g)
        assert len(parts) == min(n, m)
        assert all(p.numel() > 0 for p in parts)
        assert sorted(torch.cat(parts).tolist()) == list(range(n))
        sizes = [p.numel() for p in parts]
        assert sizes[:-1] == [n // len(parts)] * (len(parts) - 1)


def test_pseudo_bags_are_random():
    a = pseudo_bag_indices(100, 5, generator=torch.Generator().manual_seed(0))
    b = pseudo_bag_indices(100, 5, generator=torch.Generator().manual_seed(1))
    assert a[0].tolist() != b[0].tolist()

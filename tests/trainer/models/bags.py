"""A small synthetic bag with segments, shared by the model tests."""
import torch

from trainer.data import Bag


def make_bag(N=60, S=4, D=16, label=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    seg = torch.randint(-1, S, (N,), generator=g)
    seg[:S] = torch.arange(S)                      # every segment non-empty
    sizes = torch.bincount(seg[seg >= 0], minlength=S)
    feats = torch.randn(N, D, generator=g)
    gf = torch.stack([feats[seg == k].mean(0) for k in range(S)])
    return Bag("s", feats, gf, seg, sizes, sizes.double() * 100, torch.ones(N, dtype=torch.float64),
               torch.tensor(label))

"""Shared fixtures: one small seeded synthetic store per test session (written directly, no converter)."""
from __future__ import annotations

import pytest
import torch

from fixtures.synthetic import make_synthetic_store


@pytest.fixture(autouse=True)
def _one_thread():
    # 2 shared cores: one intra-op thread is far faster for small bags (no OpenMP spin contention)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def syn_store(tmp_path_factory):
    """64 slides (32 tumor / 32 normal), ~65 patches each, D = 16."""
    return make_synthetic_store(tmp_path_factory.mktemp("syn") / "cohort.zarr", n_slides=64, n_side=9, dim=16,
                                signal=3.0, seed=3)

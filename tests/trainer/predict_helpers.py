"""A small trained run shared by the predict / eval / heatmap tests (own cohort: independent of conftest)."""
from __future__ import annotations

import torch

from trainer.config import TrainConfig
from trainer.run import run_fit
from fixtures.synthetic import make_synthetic_store

N_SLIDES = 20


def small_store(path):
    """20 slides (10 tumor / 10 normal), ~50 patches each, D = 16, strong signal."""
    return make_synthetic_store(path, n_slides=N_SLIDES, n_side=8, dim=16, signal=4.0, seed=5)


def small_run(store, out, model="abmil-gated", group_features=True, epochs=2):
    """2-fold run, a couple of epochs (seconds on one thread)."""
    torch.set_num_threads(1)
    run_fit(TrainConfig(store=str(store), out=str(out), model=model, group_features=group_features, folds=2,
                        max_epochs=epochs, lr=2e-3, quiet=True, threads=1, cache=True, seed=4))
    return out

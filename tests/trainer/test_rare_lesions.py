"""Rare strong lesions in big bags: learnable at the defaults (the max-instance term), not without it.

The ``tiny-rare`` cohort (fixtures/cohorts.py): 48 slides of 1k-2k patches, lesions of 0.4-1 % of a
positive slide's patches, each lesion patch far out on 4 feature dimensions; a logistic regression on
max-pooled features separates the classes, one on mean-pooled features does not.
"""
import json

import numpy as np
import pytest

from fixtures.cohorts import PRESETS, generate
from trainer.config import TrainConfig
from trainer.run import run_fit


@pytest.fixture(scope="module")
def rare_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("rare") / "tiny_rare.zarr"
    generate(path, PRESETS["tiny-rare"], progress=False)
    return path


def _fit(store, out, **kw):
    cfg = TrainConfig(store=str(store), out=str(out), model="abmil", folds=3, max_epochs=10, quiet=True,
                      threads=1, cache=True, seed=2021, **kw)
    return run_fit(cfg)


@pytest.mark.slow
def test_abmil_finds_rare_lesions_at_defaults_and_not_without_the_max_instance_term(rare_store, tmp_path):
    res = _fit(rare_store, tmp_path / "defaults")
    aucs = [f["test"]["auc"] for f in res["folds"]]
    assert min(aucs) >= 0.9, aucs
    assert res["flagged_folds"] == []
    # the same protocol with the term off and a mean-pooling start does not find them
    off = _fit(rare_store, tmp_path / "off", max_instance_weight=0.0, attn_init="uniform")
    assert np.mean([f["test"]["auc"] for f in off["folds"]]) < 0.75
    saved = json.loads((tmp_path / "defaults" / "results.json").read_text())
    assert saved["config"]["max_instance_weight"] == 0.5 and saved["config"]["standardize"] is True

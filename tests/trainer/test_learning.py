"""Learning test: on a seeded synthetic cohort both AB-MIL and SAM-MIL clearly beat chance (CPU, seconds)."""
import pytest

from trainer.config import TrainConfig
from trainer.run import run_fit


@pytest.mark.parametrize("model", ["abmil", "sam-mil"])
def test_beats_chance(syn_store, tmp_path, model):
    cfg = TrainConfig(store=str(syn_store), out=str(tmp_path / model), model=model, folds=3, max_epochs=15,
                      patience=15, lr=1e-3, quiet=True, threads=1, cache=True, seed=11)
    res = run_fit(cfg)
    auc = res["summary"]["test"]["auc"]["mean"]
    assert auc > 0.75, res["summary"]
    assert res["summary"]["test"]["bal_acc"]["mean"] > 0.6

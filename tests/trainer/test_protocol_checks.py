"""Degenerate-fold flags, median/IQR and protocol warnings."""
import numpy as np
import pytest

from trainer.protocol_checks import fold_flags, median_iqr, run_warnings
from trainer.splits import Split


def _fold(test_auc, val_auc=0.9, epoch=5):
    return {"test": {"auc": test_auc}, "val": {"auc": val_auc}, "best_epoch": epoch}


def test_flags_values():
    folds = [_fold(0.95), _fold(0.93), _fold(0.97), _fold(0.40), _fold(0.91, val_auc=0.5, epoch=1)]
    flags = fold_flags(folds)
    assert flags[0] == [] and flags[1] == [] and flags[2] == []
    assert flags[3] == ["test-outlier", "collapsed"]
    assert flags[4] == ["early-epoch", "val-auc<=0.5"]
    # a spread-out but healthy set of folds is not flagged
    assert fold_flags([_fold(a) for a in (0.7, 0.75, 0.8, 0.85, 0.9)]) == [[]] * 5


def test_median_iqr():
    m = median_iqr([0.1, 0.2, 0.3, 0.4, float("nan")])
    assert m == {"median": pytest.approx(0.25), "q1": pytest.approx(0.175), "q3": pytest.approx(0.325)}


def test_warnings_small_validation_and_no_case_ids():
    y = np.array([0] * 30 + [1] * 30)
    ids = [f"s{i}" for i in range(60)]
    small = Split(0, 0, np.arange(0, 40), np.array([0, 1, 2, 30, 31]), np.arange(40, 60))
    big = Split(0, 1, np.arange(0, 20), np.r_[np.arange(0, 10), np.arange(30, 40)], np.arange(40, 60))
    w = run_warnings([small, big], y, ids, ids, "auc", 2)
    assert any("1 of 2 validation splits" in x and "r0_f0 (3/2)" in x for x in w)
    assert any("splits are by slide" in x for x in w)
    assert any("--monitor auc" in x for x in w)
    w2 = run_warnings([big], y, ids, [f"case{i // 2}" for i in range(60)], "loss", 2)
    assert not any("validation splits" in x or "by slide" in x for x in w2)

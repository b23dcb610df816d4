import numpy as np
import pytest

from trainer.metrics import evaluate_fold, mean_std, youden_threshold


def test_youden_threshold_simple():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    assert youden_threshold(y, p) == pytest.approx(0.6)


def test_threshold_is_taken_from_validation_not_test():
    # validation separates at 0.6; on test the optimum is 0.35 (positives score low there)
    y_val = np.array([0, 0, 0, 1, 1, 1])
    p_val = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    y_te = np.array([0, 0, 0, 1, 1, 1])
    p_te = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.5])
    prob = lambda p: np.stack([1 - p, p], 1)  # noqa: E731
    r = evaluate_fold(y_val, prob(p_val), y_te, prob(p_te))
    assert r["test"]["threshold"] == pytest.approx(0.6) == r["val"]["threshold"]
    assert r["test"]["auc"] == pytest.approx(1.0)
    assert r["test"]["acc"] == pytest.approx(0.5)          # every test slide predicted negative at 0.6
    assert r["test"]["f1"] == 0.0 and r["test"]["bal_acc"] == pytest.approx(0.5)
    assert r["test_optimistic"]["threshold"] == pytest.approx(0.35)
    assert r["test_optimistic"]["acc"] == 1.0
    assert "optimistic" in r["test_optimistic"]["note"]


def test_multiclass_uses_argmax():
    y = np.array([0, 1, 2, 2])
    prob = np.eye(3)[[0, 1, 2, 1]] * 0.8 + 0.2 / 3
    r = evaluate_fold(y, prob, y, prob)
    assert r["test"]["threshold"] is None and r["test"]["acc"] == 0.75 and "test_optimistic" not in r


def test_mean_std():
    assert mean_std([0.8, 1.0]) == {"mean": pytest.approx(0.9), "std": pytest.approx(np.std([0.8, 1.0], ddof=1)),
                                    "n": 2}

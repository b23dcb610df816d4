"""Bootstrap intervals (trainer/bootstrap.py): exact weighted AUC, coverage on simulated data, paired sign."""
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from trainer.bootstrap import (auc_ci, auc_of, paired_auc_diff_ci, paired_diff_ci, slide_resample_weights,
                               weighted_auc)


def _phi(x):
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


@pytest.mark.parametrize("n", [7, 40, 301])
def test_weighted_auc_equals_sklearn_with_ties_and_weights(n):
    rng = np.random.default_rng(n)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = np.round(rng.normal(size=n) + y, 1)  # many ties
    w = rng.integers(0, 4, size=(6, n)).astype(float)
    w[:, :2] = 1.0
    got = weighted_auc(s, y == 1, w)
    ref = [roc_auc_score(y, s, sample_weight=wi) for wi in w]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    assert auc_of(y, s)[0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_multiclass_auc_is_macro_one_vs_rest():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    p = rng.dirichlet([1, 1, 1], 150)
    p[np.arange(150), y] += 0.4
    p /= p.sum(1, keepdims=True)
    assert auc_of(y, p)[0] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)


def test_resampling_is_stratified_by_class_and_keeps_a_slides_rows_together():
    y = np.array([0, 0, 1, 1, 1, 0, 0, 1, 1, 1])
    groups = np.array(["a", "b", "c", "d", "e"] * 2)  # each slide twice (two repeats)
    w = slide_resample_weights(y, groups, 200, np.random.default_rng(0))
    assert (w[:, y == 0].sum(1) == 4).all() and (w[:, y == 1].sum(1) == 6).all()  # 2 / 3 slides x 2 rows
    np.testing.assert_array_equal(w[:, :5], w[:, 5:])  # a slide's two rows share its count
    assert len({tuple(r) for r in w}) > 20


def test_pooled_auc_interval_covers_the_true_auc():
    """Binormal scores with a known AUC = Phi(1 / sqrt 2) = 0.760: the 95 % interval covers it ~95 % of the time."""
    true = _phi(1.0 / math.sqrt(2.0))
    rng = np.random.default_rng(1)
    hits, widths = 0, []
    for i in range(150):
        y = np.r_[np.zeros(50, int), np.ones(50, int)]
        s = rng.normal(size=100) + y
        c = auc_ci(y, s, n_boot=400, seed=i)
        assert c["lo"] <= c["auc"] <= c["hi"]
        hits += c["lo"] <= true <= c["hi"]
        widths.append(c["hi"] - c["lo"])
    assert 0.88 <= hits / 150 <= 0.99, hits
    # the sampling sd of the AUC here is ~0.047 (Hanley-McNeil): a 95 % interval is ~0.18 wide
    assert 0.14 <= float(np.mean(widths)) <= 0.22


def test_repeated_slides_are_resampled_as_one():
    rng = np.random.default_rng(5)
    y = np.r_[np.zeros(40, int), np.ones(40, int)]
    s = rng.normal(size=80) + y
    ids = np.array([f"s{i}" for i in range(80)])
    one = auc_ci(y, s, groups=ids, seed=0)
    # the same slides tested twice (two repeats, same scores): same AUC, about the same interval
    two = auc_ci(np.r_[y, y], np.r_[s, s], groups=np.r_[ids, ids], seed=0)
    naive = auc_ci(np.r_[y, y], np.r_[s, s], groups=None, seed=0)
    assert two["auc"] == pytest.approx(one["auc"], abs=1e-12) and two["n_slides"] == 80 and two["n_rows"] == 160
    w1, w2, wn = one["hi"] - one["lo"], two["hi"] - two["lo"], naive["hi"] - naive["lo"]
    assert w2 == pytest.approx(w1, rel=0.15)
    assert wn < 0.85 * w2  # treating the copies as new slides would overstate the certainty


def test_auc_interval_undefined_with_one_class():
    c = auc_ci(np.zeros(10, int), np.linspace(0, 1, 10))
    assert math.isnan(c["auc"]) and math.isnan(c["lo"]) and math.isnan(c["hi"])


def test_paired_difference_of_identical_values_is_exactly_zero():
    a = [0.81, 0.93, 0.77, 0.64, 1.0]
    c = paired_diff_ci(a, list(a))
    assert c["mean_diff"] == 0.0 and c["lo"] == 0.0 and c["hi"] == 0.0
    assert (c["wins"], c["losses"], c["ties"], c["n"]) == (0, 0, 5, 5)


def test_paired_difference_values_sign_and_nan_pairs():
    a = np.array([0.9, 0.8, 0.7, 0.95, np.nan, 0.6])
    b = np.array([0.8, 0.85, 0.6, 0.95, 0.5, 0.5])
    c = paired_diff_ci(a, b, n_boot=4000, seed=3)
    d = np.array([0.1, -0.05, 0.1, 0.0, 0.1])
    assert c["mean_diff"] == pytest.approx(d.mean(), abs=1e-12)
    assert (c["wins"], c["losses"], c["ties"], c["n"], c["n_dropped"]) == (3, 1, 1, 5, 1)
    assert c["mean_a"] == pytest.approx(np.mean([0.9, 0.8, 0.7, 0.95, 0.6]))
    # percentile interval of the resampled mean: inside [min d, max d], around the mean
    assert -0.05 <= c["lo"] < c["mean_diff"] < c["hi"] <= 0.1
    # the same seed gives the same interval
    assert paired_diff_ci(a, b, n_boot=4000, seed=3) == c


def test_paired_difference_interval_covers_the_true_mean():
    rng = np.random.default_rng(2)
    hits = sum(
        (lambda c: c["lo"] <= 0.05 <= c["hi"])(paired_diff_ci(rng.normal(0.05, 0.1, 15), np.zeros(15), n_boot=1000,
                                                               seed=i))
        for i in range(300))
    assert 0.85 <= hits / 300 <= 0.99, hits


def test_paired_pooled_auc_difference():
    rng = np.random.default_rng(4)
    y = np.r_[np.zeros(60, int), np.ones(60, int)]
    good = rng.normal(size=120) + 2.0 * y
    weak = rng.normal(size=120) + 0.3 * y
    same = paired_auc_diff_ci(y, good, good)
    assert same["mean_diff"] == 0.0 and same["lo"] == 0.0 and same["hi"] == 0.0
    c = paired_auc_diff_ci(y, good, weak, n_boot=1000)
    assert c["mean_diff"] == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, weak), abs=1e-12)
    assert 0.0 < c["lo"] < c["mean_diff"] < c["hi"]


def test_mismatched_lengths_refused():
    with pytest.raises(ValueError, match="different lengths"):
        paired_diff_ci([1, 2], [1, 2, 3])

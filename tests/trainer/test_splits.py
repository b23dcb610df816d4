
import numpy as np
import pytest

from clam2sam.errors import UsageError
from trainer.splits import check_no_case_leak, make_cv_splits, read_clam_splits


def _cohort(n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array([i % 2 for i in range(n)])
    # cases of 1-3 slides with the same label
    cases, c = [], 0
    i = 0
    while i < n:
        k = int(rng.integers(1, 4))
        for j in range(i, min(i + k, n)):
            cases.append(f"p{c}_{y[i]}")  # label is constant within a case below
        c += 1
        i += k
    y = np.array([int(cs.split("_")[1]) for cs in cases])
    return y, cases


def test_no_case_in_two_parts_and_folds_partition():
    y, cases = _cohort()
    splits = make_cv_splits(y, cases, folds=5, repeats=2, val_frac=0.2, seed=7)
    assert len(splits) == 10
    for r in range(2):
        tests = np.concatenate([s.test for s in splits if s.repeat == r])
        assert sorted(tests.tolist()) == list(range(len(y)))     # test folds partition the cohort
    cases = np.asarray(cases)
    for s in splits:
        check_no_case_leak(s, list(cases))
        assert len(s.val) > 0 and set(y[s.val]) == {0, 1}
        assert not (set(s.train) & set(s.val) or set(s.train) & set(s.test) or set(s.val) & set(s.test))
        assert len(s.train) + len(s.val) + len(s.test) == len(y)
        for part in (s.train, s.val, s.test):
            for c in set(cases[part]):
                assert set(np.flatnonzero(cases == c)) <= set(part)


def test_repeats_use_different_seeds_and_same_seed_reproduces():
    y, cases = _cohort()
    a = make_cv_splits(y, cases, folds=3, repeats=2, seed=1)
    b = make_cv_splits(y, cases, folds=3, repeats=2, seed=1)
    assert all(np.array_equal(x.test, z.test) for x, z in zip(a, b))
    assert not all(np.array_equal(a[i].test, a[i + 3].test) for i in range(3))


def test_leak_detected():
    y, cases = _cohort()
    s = make_cv_splits(y, cases, folds=3, seed=1)[0]
    cases = list(cases)
    cases[s.test[0]] = cases[s.train[0]]
    with pytest.raises(UsageError, match="both"):
        check_no_case_leak(s, cases)


def test_too_many_folds_is_a_usage_error():
    with pytest.raises(UsageError, match="cases"):
        make_cv_splits(np.array([0, 1, 0]), ["a", "b", "c"], folds=5)


def test_read_clam_splits_warns_on_overlapping_tests(tmp_path):
    ids = [f"s{i}" for i in range(6)]
    (tmp_path / "splits_0.csv").write_text(",train,val,test\n0,s0,s2,s4\n1,s1,s3,s5\n")
    (tmp_path / "splits_1.csv").write_text(",train,val,test\n0,s0.svs,s2,s4\n1,s5,s3,s1\n")
    with pytest.warns(UserWarning, match="overlap"):
        splits = read_clam_splits(tmp_path, ids)
    assert [ids[i] for i in splits[0].test] == ["s4", "s5"]
    assert [ids[i] for i in splits[1].train] == ["s0", "s5"]


def test_read_clam_splits_requires_validation(tmp_path):
    (tmp_path / "splits_0.csv").write_text(",train,val,test\n0,s0,,s1\n")
    with pytest.raises(UsageError, match="validation"):
        read_clam_splits(tmp_path, ["s0", "s1"])

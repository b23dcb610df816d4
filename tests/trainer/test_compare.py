"""``samtrain compare``: pairing, values, refusals, outputs (library and CLI)."""
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from clam2sam.errors import UsageError
from tests.trainer.fake_runs import assert_picture, make_fake_run
from trainer.cli.main import main
from trainer.compare import POOLED, compare_runs, table_text


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    a = make_fake_run(base / "good", seed=1, signal=2.5, folds=4)
    b = make_fake_run(base / "weak", seed=2, signal=0.4, folds=4)
    return a, b


def _fold_auc(run):
    res = json.loads((run / "results.json").read_text())
    return {f["split"]: f["test"]["auc"] for f in res["folds"]}


def test_paired_values_and_sign(runs):
    a, b = runs
    res = compare_runs([a, b], n_boot=2000)
    fa, fb = _fold_auc(a), _fold_auc(b)
    d = np.array([fa[k] - fb[k] for k in res["folds"]])
    m = res["comparisons"][0]["metrics"]["test AUC"]
    assert res["folds"] == ["r0_f0", "r0_f1", "r0_f2", "r0_f3"]
    assert m["mean_a"] == pytest.approx(np.mean(list(fa.values())), abs=1e-12)
    assert m["mean_diff"] == pytest.approx(d.mean(), abs=1e-12)
    assert (m["wins"], m["losses"], m["n"]) == (int((d > 0).sum()), int((d < 0).sum()), 4)
    assert d.min() <= m["lo"] <= m["mean_diff"] <= m["hi"] <= d.max()
    assert m["mean_diff"] > 0.2  # signal 2.5 against 0.4
    # pooled AUC difference on the same slides
    p = res["comparisons"][0]["metrics"][POOLED]
    assert p["n_slides"] == 36 and p["lo"] < p["mean_diff"] < p["hi"] and p["lo"] > 0
    assert res["runs"][0]["pooled_test_auc"]["lo"] <= p["auc_a"] <= res["runs"][0]["pooled_test_auc"]["hi"]
    text = table_text(res)
    assert "A = good  vs  B = weak" in text and f"{m['mean_diff']:+.3f}" in text and f"{m['wins']}/4" in text


def test_pooled_auc_matches_sklearn_on_the_predictions(runs):
    a, _ = runs
    import csv

    ys, ps = [], []
    for f in sorted(a.glob("fold_*/predictions.csv")):
        for r in csv.DictReader(f.open()):
            if r["split"] == "test":
                ys.append(r["label"] == "tumor")
                ps.append(float(r["p_tumor"]))
    res = compare_runs([a, a.parent / "weak"], n_boot=500)
    assert res["runs"][0]["pooled_test_auc"]["auc"] == pytest.approx(roc_auc_score(ys, ps), abs=1e-12)


def test_a_run_compared_with_itself_gives_exactly_zero(runs):
    a, _ = runs
    res = compare_runs([a, a], n_boot=1000)
    for label, m in res["comparisons"][0]["metrics"].items():
        assert m["mean_diff"] == 0.0 and m["lo"] == 0.0 and m["hi"] == 0.0, label
        if label != POOLED:
            assert m["ties"] == m["n"] == 4 and m["wins"] == m["losses"] == 0


def test_mismatched_splits_refused_naming_fold_and_slides(tmp_path, runs):
    a, _ = runs
    other = make_fake_run(tmp_path / "other_seed", seed=1, signal=2.5, folds=4, split_seed=9)
    with pytest.raises(UsageError) as e:
        compare_runs([a, other])
    msg = str(e.value)
    assert "good and other_seed were not trained on the same splits (seed 0 vs 9)" in msg
    assert "fold r0_f0 test:" in msg and "slides only in good (slide_" in msg and "--seed" in msg


def test_different_fold_count_refused(tmp_path, runs):
    a, _ = runs
    three = make_fake_run(tmp_path / "three", folds=3)
    with pytest.raises(UsageError, match="folds only in good: r0_f3"):
        compare_runs([a, three])


def test_different_labels_and_classes_refused(tmp_path, runs):
    a, _ = runs
    relab = make_fake_run(tmp_path / "relabelled", seed=3, folds=4, relabel={"slide_004": "tumor"})
    with pytest.raises(UsageError, match="label some slides differently.*slide_004"):
        compare_runs([a, relab])
    cls = make_fake_run(tmp_path / "classes", seed=3, folds=4, classes=("benign", "tumor"))
    with pytest.raises(UsageError, match=r"classes \['normal', 'tumor'\] vs \['benign', 'tumor'\]"):
        compare_runs([a, cls])


def test_unfinished_run_refused(tmp_path, runs):
    a, _ = runs
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="no results.json.*re-run"):
        compare_runs([a, tmp_path / "half"])


def _cli(args):
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


def test_cli_json_table_plot_and_page(runs, capsys):
    a, b = runs
    assert _cli(["compare", str(a), str(b), "--json", "--n-boot", "2000"]) == 0
    cap = capsys.readouterr()
    got = json.loads(cap.out)
    ref = compare_runs([a, b], n_boot=2000)
    for label in ("test AUC", "test acc", "val AUC", POOLED):
        g, r = got["comparisons"][0]["metrics"][label], ref["comparisons"][0]["metrics"][label]
        for k in ("mean_diff", "lo", "hi"):
            assert g[k] == pytest.approx(r[k], abs=1e-12), (label, k)
    fa, fb = _fold_auc(a), _fold_auc(b)
    assert got["per_fold"]["good"]["test AUC"] == [fa[k] for k in got["folds"]]
    assert got["per_fold"]["weak"]["test AUC"] == [fb[k] for k in got["folds"]]
    # the table on stderr, outputs beside the first run by default
    assert "A = good  vs  B = weak" in cap.err and "test AUC (pooled)" in cap.err
    out = a.parent / "compare_good_vs_weak"
    assert_picture(out / "forest.png")
    page = (out / "index.html").read_text()
    assert "<h2>Paired differences</h2>" in page and "data:image/png;base64," in page
    assert json.loads((out / "compare.json").read_text())["folds"] == got["folds"]


def test_cli_three_runs_and_out_dir(runs, tmp_path, capsys):
    a, b = runs
    c = make_fake_run(tmp_path / "third", seed=5, signal=1.0, folds=4)
    assert _cli(["compare", str(a), str(b), str(c), "--out", str(tmp_path / "cmp"), "--n-boot", "500"]) == 0
    err = capsys.readouterr().err
    assert "B = weak" in err and "B = third" in err
    js = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [x["b"] for x in js["comparisons"]] == ["weak", "third"]


def test_cli_mismatch_exit_2(runs, tmp_path, capsys):
    a, _ = runs
    other = make_fake_run(tmp_path / "other", folds=4, split_seed=4)
    assert _cli(["compare", str(a), str(other)]) == 2
    assert "not trained on the same splits" in capsys.readouterr().err
    assert _cli(["compare", str(a)]) == 2
    assert "give at least two runs" in capsys.readouterr().err


def test_repeats_are_paired_and_pooled_by_slide(tmp_path):
    a = make_fake_run(tmp_path / "a", seed=1, signal=2.0, folds=3, repeats=2)
    b = make_fake_run(tmp_path / "b", seed=2, signal=1.0, folds=3, repeats=2)
    res = compare_runs([a, b], n_boot=1000)
    assert res["folds"] == ["r0_f0", "r0_f1", "r0_f2", "r1_f0", "r1_f1", "r1_f2"]
    m = res["comparisons"][0]["metrics"]
    assert m["test AUC"]["n"] == 6
    d = np.array(res["per_fold"]["a"]["test AUC"]) - np.array(res["per_fold"]["b"]["test AUC"])
    assert m["test AUC"]["mean_diff"] == pytest.approx(d.mean(), abs=1e-12)
    # each slide is tested once per repeat: 72 predictions of 36 slides, resampled by slide
    assert m[POOLED]["n_rows"] == 72 and m[POOLED]["n_slides"] == 36
    assert res["runs"][0]["pooled_test_auc"]["n_slides"] == 36

"""The run report (trainer/run_report.py): files, contents, `samtrain report`, and the report written by fit."""
import csv
import json
import re

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tests.trainer.fake_runs import assert_picture, make_fake_run
from trainer.cli.main import main
from trainer.run_files import pooled_predictions
from trainer.run_report import HEADINGS, confusion_counts, write_report

SPREAD = {"per_segment": [0.07, 0.1, 0.3, 0.55, 0.8, 0.88, 0.9, 0.9], "median": 0.675}


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    run = make_fake_run(tmp_path_factory.mktemp("r") / "sammil", seed=4, signal=1.2, folds=3, model="sam-mil",
                        flags={"r0_f1": ["selected epoch < 2", "val AUC <= 0.5"]},
                        extra={"sg2m_ratio_spread": SPREAD})
    return run, write_report(run, n_boot=500)


def test_report_files_are_real_pictures(fake):
    run, index = fake
    d = run / "report"
    assert index == d / "index.html"
    names = {p.name for p in d.glob("*.png")}
    assert names == {"learning_r0_f0.png", "learning_r0_f1.png", "learning_r0_f2.png", "roc_pr.png", "confusion.png",
                     "probabilities.png", "sg2m_ratios.png"}
    for n in names:
        assert_picture(d / n)


def test_page_is_self_contained_with_headings_flags_and_config(fake):
    run, index = fake
    page = index.read_text()
    for h in HEADINGS.values():
        assert f"<h2>{h}</h2>" in page, h
    assert page.count('src="data:image/png;base64,') == 7
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page) and "<script" not in page
    # the degenerate fold is flagged in its row
    row = re.search(r'<tr class="flag">(.*?)</tr>', page, re.S).group(1)
    assert "r0_f1" in row and "selected epoch &lt; 2, val AUC &lt;= 0.5" in row
    assert page.count('<tr class="flag">') == 1
    assert "median" in page and "0.675" in page  # the SG2M scalar statistic
    assert "<td class=\"l\">model</td><td>sam-mil</td>" in page


def test_pooled_interval_and_confusion_counts(fake):
    run, index = fake
    res = json.loads((run / "results.json").read_text())
    test = pooled_predictions(run, res)
    auc = roc_auc_score(test.y, test.score)
    page = index.read_text()
    assert f"{100 * auc:.2f} [" in page
    # confusion matrix at each fold's own validation threshold, recomputed by hand from predictions.csv
    cm = np.zeros((2, 2), int)
    for i, f in enumerate(res["folds"]):
        thr = f["test"]["threshold"]
        for r in csv.DictReader((run / f"fold_{f['split']}" / "predictions.csv").open()):
            if r["split"] == "test":
                cm[int(r["label"] == "tumor"), int(float(r["p_tumor"]) >= thr)] += 1
    np.testing.assert_array_equal(confusion_counts(test, res["folds"], 2), cm)
    assert cm.sum() == 36
    assert f"<td>{cm[1, 0]}</td><td>{cm[1, 1]}</td>" in page


def test_no_sg2m_section_without_the_record(tmp_path):
    run = make_fake_run(tmp_path / "abmil", seed=2, folds=2)
    page = write_report(run, n_boot=200).read_text()
    assert f"<h2>{HEADINGS['sg2m']}</h2>" not in page and not (run / "report" / "sg2m_ratios.png").exists()


def test_multiclass_report(tmp_path):
    run = make_fake_run(tmp_path / "mc", seed=3, signal=2.0, folds=3, n_slides=45, classes=("a", "b", "c"))
    write_report(run, n_boot=200)
    for k in range(3):
        assert_picture(run / "report" / f"roc_pr_{k}.png")
    assert_picture(run / "report" / "confusion.png")


def _cli(args):
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


def test_samtrain_report_redraws(tmp_path, capsys):
    run = make_fake_run(tmp_path / "r", seed=6, folds=2)
    (run / "report").mkdir()
    (run / "report" / "learning_r9_f9.png").write_bytes(b"stale")
    (run / "report" / "my_notes.png").write_bytes(b"the user's own file")
    assert _cli(["report", str(run), "--n-boot", "300"]) == 0
    assert "report:" in capsys.readouterr().err
    assert not (run / "report" / "learning_r9_f9.png").exists()
    assert (run / "report" / "my_notes.png").read_bytes() == b"the user's own file"
    assert_picture(run / "report" / "roc_pr.png")
    assert (run / "report" / "index.html").stat().st_size > 50_000
    assert _cli(["report", str(run), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "index.html").is_file()
    assert _cli(["report", str(tmp_path)]) == 2  # not a run
    assert "no results.json" in capsys.readouterr().err


def test_fit_writes_report_and_pooled_interval_and_a_plot_failure_only_warns(syn_store, tmp_path, monkeypatch,
                                                                            capsys):
    from trainer import report_plots
    from trainer.config import TrainConfig
    from trainer.run import run_fit

    def broken(*a, **k):
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(report_plots, "roc_pr", broken)
    cfg = TrainConfig(store=str(syn_store), out=str(tmp_path / "run"), model="abmil", folds=2, max_epochs=2,
                      quiet=True, threads=1, cache=True, seed=5)
    res = run_fit(cfg)  # the plot fails: the fit still succeeds
    assert "warning: the run report was not written (RuntimeError: no fonts today)" in capsys.readouterr().err
    out = tmp_path / "run"
    saved = json.loads((out / "results.json").read_text())
    ci = saved["summary"]["test_auc_pooled"]
    test = pooled_predictions(out, saved)
    assert ci["auc"] == pytest.approx(roc_auc_score(test.y, test.score), abs=1e-12)
    assert ci["lo"] <= ci["auc"] <= ci["hi"] and ci["n_slides"] == 64 and res["summary"]["test_auc_pooled"] == ci
    summary = (out / "summary.md").read_text()
    assert f"| pooled [95 % CI] |  |  |  | {100 * ci['auc']:.2f} [{100 * ci['lo']:.2f}, {100 * ci['hi']:.2f}] |" \
        in summary
    monkeypatch.undo()
    # a fit that draws: the report is written by the fit itself
    cfg = TrainConfig(store=str(syn_store), out=str(tmp_path / "run2"), model="abmil", folds=2, max_epochs=2,
                      quiet=True, threads=1, cache=True, seed=5)
    run_fit(cfg)
    d = tmp_path / "run2" / "report"
    for n in ("learning_r0_f0.png", "learning_r0_f1.png", "roc_pr.png", "confusion.png", "probabilities.png"):
        assert_picture(d / n)
    assert "<h2>Learning curves</h2>" in (d / "index.html").read_text()


def test_recorded_percentiles_and_run_warnings_are_shown(tmp_path):
    """results.json as fit writes it: SG2M spread as percentiles, run-level warnings, per-fold flag lists."""
    spread = {"n_segments": 374, "p10": 0.135, "p50": 0.302, "p90": 0.856, "share_above_0.8": 0.168,
              "area_unit": "relative-size"}
    run = make_fake_run(tmp_path / "s", seed=7, folds=2, model="sam-mil", flags={"r0_f0": []},
                        extra={"sg2m_ratio_spread": spread,
                               "warnings": ["2 of 2 validation splits hold fewer than 10 slides of a class"]})
    page = write_report(run, n_boot=200).read_text()
    assert_picture(run / "report" / "sg2m_ratios.png", min_bytes=3000)
    assert "<li>2 of 2 validation splits hold fewer than 10 slides of a class</li>" in page
    assert '<tr class="flag">' not in page  # an empty flag list is no flag
    for k in ("p10", "0.302", "share_above_0.8", "relative-size"):
        assert k in page

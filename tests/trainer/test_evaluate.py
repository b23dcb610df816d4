"""samtrain eval: metrics at the run's validation threshold, confusion matrix, ROC PNG, labels override."""
import csv
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from clam2sam.errors import UsageError
from trainer.cli.main import main
from trainer.evaluate import run_eval

from .predict_helpers import N_SLIDES, small_run, small_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return small_store(tmp_path_factory.mktemp("ev") / "c.zarr")


@pytest.fixture(scope="module")
def run_dir(store, tmp_path_factory):
    return small_run(store, tmp_path_factory.mktemp("ev") / "run", model="mean", group_features=False)


def test_metrics_match_predictions(run_dir, store, tmp_path):
    res = run_eval(run_dir, store, tmp_path / "e", quiet=True)
    rows = list(csv.DictReader(open(tmp_path / "e" / "predictions.csv")))
    y = np.array([r["label"] == "tumor" for r in rows], int)
    p = np.array([float(r["p_tumor"]) for r in rows])
    pred = (p >= res["threshold"]).astype(int)
    assert res["n_slides"] == N_SLIDES and res["class_counts"] == {"normal": 10, "tumor": 10}
    assert res["auc"] == pytest.approx(roc_auc_score(y, p))
    assert res["acc"] == pytest.approx(float((pred == y).mean()))
    cm = np.array(res["confusion_matrix"])
    assert cm.sum() == N_SLIDES and cm[1, 1] == int(((pred == 1) & (y == 1)).sum())
    assert cm[0, 1] == int(((pred == 1) & (y == 0)).sum())
    tp, fp, fn = cm[1, 1], cm[0, 1], cm[1, 0]
    assert res["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    assert res["bal_acc"] == pytest.approx((cm[1, 1] / cm[1].sum() + cm[0, 0] / cm[0].sum()) / 2)
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["auc"] == pytest.approx(res["auc"])
    saved = list(csv.reader(open(tmp_path / "e" / "confusion_matrix.csv")))
    assert saved[0][1:] == ["normal", "tumor"] and [int(v) for v in saved[2][1:]] == cm[1].tolist()
    img = Image.open(tmp_path / "e" / "roc.png")
    assert img.format == "PNG" and img.size[0] > 200
    assert (tmp_path / "e" / "scores.zarr").is_dir()


def test_labels_csv_overrides_store(run_dir, store, tmp_path):
    base = run_eval(run_dir, store, tmp_path / "a", quiet=True)
    rows = list(csv.DictReader(open(tmp_path / "a" / "predictions.csv")))
    flip = {"normal": "tumor", "tumor": "normal"}
    lab = tmp_path / "labels.csv"
    lab.write_text("slide_id,label\n" + "".join(f"{r['slide_id']},{flip[r['label']]}\n" for r in rows[:-2]))
    res = run_eval(run_dir, store, tmp_path / "b", labels=str(lab), quiet=True)
    assert res["n_slides"] == N_SLIDES   # the 2 slides absent from the CSV keep the store's label
    # every other label flipped: the AUC is (nearly) mirrored
    lab.write_text("slide_id,label\n" + "".join(f"{r['slide_id']},{flip[r['label']]}\n" for r in rows))
    res = run_eval(run_dir, store, tmp_path / "c", labels=str(lab), quiet=True)
    assert res["auc"] == pytest.approx(1.0 - base["auc"])
    lab.write_text("slide_id,label\nslide_000,maybe\n")
    with pytest.raises(UsageError, match="maybe"):
        run_eval(run_dir, store, tmp_path / "d", labels=str(lab), quiet=True)


def test_cli_eval_json(run_dir, store, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", str(run_dir), str(store), "--out", str(tmp_path / "o"), "-q", "--json"])
    assert e.value.code == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    assert 0.0 <= res["auc"] <= 1.0 and res["model"] == "mean" and "confusion matrix" in cap.err

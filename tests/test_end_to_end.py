"""The product end to end through the CLIs: reference fixtures and the bundled demo cohort.

These are the README's main job (scripts/demo.sh) in miniature: convert -> inspect -> fit -> predict.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from clam2sam.cli.main import main as c2s
from clam2sam.store.writer import open_store
from trainer.cli.main import main as samtrain

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT.parent / "shared" / "fixtures" / "reference"
DEMO = ROOT / "fixtures" / "demo"


def _exit(fn, args):
    with pytest.raises(SystemExit) as e:
        fn([str(a) for a in args])
    return e.value.code


@pytest.mark.skipif(not REF.is_dir(), reason="../shared/fixtures/reference not present")
def test_reference_fixtures_convert_inspect_fit(tmp_path, capsys):
    store = tmp_path / "ref.zarr"
    assert _exit(c2s, ["convert", REF / "clam", "--segments-dir", REF / "sammil" / "segments",
                       "--slides-dir", REF / "slides", "--level-downsample", "ihc_tiled=1:2", "--out", store,
                       "-q"]) == 0
    assert _exit(c2s, ["inspect", store, "--check"]) == 0
    capsys.readouterr()
    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,label,case_id\ncmu_small_region,tumor,c1\nhe_tiled,normal,c2\n"
                      "ihc_tiled,tumor,c3\n")
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "splits_0.csv").write_text(",train,val,test\n0,he_tiled,cmu_small_region,ihc_tiled\n")
    run = tmp_path / "run"
    assert _exit(samtrain, ["fit", store, "--out", run, "--labels", labels, "--splits", splits,
                            "--max-epochs", "2", "--threads", "1", "-q"]) == 0
    res = json.loads((run / "results.json").read_text())
    assert len(res["folds"]) == 1
    assert (run / "fold_r0_f0" / "best.pt").is_file() and (run / "config.json").is_file()
    assert json.loads((run / "splits.json").read_text())  # splits recorded


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo.zarr"
    assert _exit(c2s, ["convert", DEMO, "--segments-dir", DEMO / "segments", "--dataset-csv",
                       DEMO / "dataset.csv", "--out", out, "-q"]) == 0
    return out


def test_demo_store_matches_generator_ground_truth(demo_store):
    """Patch membership in the store follows the generator's recorded masks (blocky masks: exact)."""
    r = open_store(demo_store)
    ids = r.slide_ids()
    assert len(ids) == 40
    labels = [r.slide_attrs(s)["label"] for s in ids]
    assert sorted(set(labels)) == ["normal", "tumor"] and labels.count("tumor") == 20
    s = r.read_slide(ids[0])
    for k in range(s.n_segments):
        rows = np.flatnonzero(s.segment_ids == k)
        np.testing.assert_allclose(s.group_features[k], s.features[rows].astype(np.float64).mean(0), atol=1e-5)


def test_demo_fit_and_predict_through_cli(demo_store, tmp_path, capsys):
    run = tmp_path / "run"
    assert _exit(samtrain, ["fit", demo_store, "--out", run, "--folds", "2", "--max-epochs", "3", "--lr", "1e-3",
                            "--threads", "1", "--cache", "-q", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["config"]["model"] == "sam-mil" and len(res["folds"]) == 2
    auc = res["summary"]["test"]["auc"]["mean"]
    assert 0.0 <= auc <= 1.0
    preds = tmp_path / "preds"
    assert _exit(samtrain, ["predict", run, demo_store, "--out", preds]) == 0
    assert any(preds.iterdir())

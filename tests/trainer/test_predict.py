"""samtrain predict: probabilities, the ensemble is the mean of its folds, per-patch arrays align with coords."""
import csv
import json

import numpy as np
import pytest
import torch
import zarr

from clam2sam.ids import slide_key
from clam2sam.store.writer import open_store
from trainer.cli.main import main
from trainer.data import read_bag
from trainer.predict import load_ensemble, run_predict

from .predict_helpers import N_SLIDES, small_run, small_store


@pytest.fixture(scope="module")
def syn_store(tmp_path_factory):
    return small_store(tmp_path_factory.mktemp("pred") / "c.zarr")


@pytest.fixture(scope="module")
def run_dir(syn_store, tmp_path_factory):
    return small_run(syn_store, tmp_path_factory.mktemp("pred") / "run")


@pytest.fixture(scope="module")
def preds(run_dir, syn_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred") / "p"
    rows = run_predict(run_dir, syn_store, out, patch_probs=True, quiet=True)
    return out, rows


def test_probabilities_and_threshold(preds, run_dir):
    out, rows = preds
    assert len(rows) == N_SLIDES
    P = np.stack([r["prob"] for r in rows])
    assert ((P >= 0) & (P <= 1)).all() and np.allclose(P.sum(1), 1.0, atol=1e-5)
    thr = [json.loads((run_dir / f"fold_r0_f{k}" / "done.json").read_text())["val"]["threshold"] for k in (0, 1)]
    table = list(csv.DictReader(open(out / "predictions.csv")))
    for r in table:
        assert float(r["threshold"]) == pytest.approx(np.mean(thr), abs=1e-5)
        assert r["pred"] == ("tumor" if float(r["p_tumor"]) >= np.mean(thr) else "normal")
        assert r["label"] in ("normal", "tumor")


def test_ensemble_is_mean_of_folds(preds, run_dir, syn_store, tmp_path):
    out, rows = preds
    per_fold = [run_predict(run_dir / f"fold_r0_f{k}" / "best.pt", syn_store, tmp_path / f"f{k}", patch_probs=True,
                            quiet=True) for k in (0, 1)]
    for i, r in enumerate(rows):
        assert np.allclose(r["prob"], (per_fold[0][i]["prob"] + per_fold[1][i]["prob"]) / 2, atol=1e-6)
    root, f0, f1 = (zarr.open_group(str(p / "scores.zarr"), mode="r") for p in (out, tmp_path / "f0", tmp_path / "f1"))
    for sid in ("slide_000", "slide_013"):
        k = slide_key(sid)
        a, b = f0["slides"][k]["scores"][...], f1["slides"][k]["scores"][...]
        assert np.allclose(root["slides"][k]["scores"][...], (a + b) / 2, atol=1e-6)
        assert np.allclose(root["slides"][k]["fold_scores"][...], np.stack([a, b]), atol=1e-6)
        assert np.allclose(root["slides"][k]["patch_prob"][...],
                           (f0["slides"][k]["patch_prob"][...] + f1["slides"][k]["patch_prob"][...]) / 2, atol=1e-6)
    # a single fold uses that fold's own validation threshold
    thr0 = json.loads((run_dir / "fold_r0_f0" / "done.json").read_text())["val"]["threshold"]
    assert load_ensemble(run_dir / "fold_r0_f0").threshold == pytest.approx(thr0)


def test_fold_predictions_match_the_run(run_dir, tmp_path, syn_store):
    """A fold's checkpoint reproduces the test probabilities the run wrote for that fold."""
    ran = {r["slide_id"]: float(r["p_tumor"]) for r in csv.DictReader(open(run_dir / "fold_r0_f1" / "predictions.csv"))}
    rows = run_predict(run_dir / "fold_r0_f1", syn_store, tmp_path / "f", quiet=True)
    checked = [r for r in rows if r["slide_id"] in ran]
    assert len(checked) == len(ran) >= 8                      # the fold's val + test slides
    for r in checked:
        assert r["prob"][1] == pytest.approx(ran[r["slide_id"]], rel=1e-4, abs=1e-6)


def test_per_patch_arrays_align_with_coords(preds, run_dir, syn_store):
    out, _ = preds
    reader = open_store(str(syn_store))
    root = zarr.open_group(str(out / "scores.zarr"), mode="r")
    assert root.attrs["model"] == "abmil-gated" and root.attrs["classes"] == ["normal", "tumor"]
    ens = load_ensemble(run_dir)
    for sid in reader.slide_ids():
        g = root["slides"][slide_key(sid)]
        coords = reader.read_array(sid, "coords")
        N = coords.shape[0]
        assert np.array_equal(g["coords"][...], coords)
        assert np.array_equal(g["segment_ids"][...], reader.read_array(sid, "segment_ids"))
        assert g["scores"].shape == (N,) and g["patch_prob"].shape == (N,)
        S = int(reader.slide_attrs(sid)["n_segments"])
        assert g["group_scores"].shape == (S,)
        p = g["patch_prob"][...]
        assert ((p >= 0) & (p <= 1)).all()
    # values: row i is patch i (recomputed straight from the model on the store's rows)
    sid = reader.slide_ids()[5]
    bag = read_bag(reader, sid, 0)
    with torch.no_grad():
        att = [m.model(bag)["scores"].numpy() for m in ens.members]
    g = root["slides"][slide_key(sid)]
    N = bag.n_patches
    assert np.allclose(g["scores"][...], np.mean([a[:N] for a in att], 0), atol=1e-6)
    assert np.allclose(g["group_scores"][...], np.mean([a[N:] for a in att], 0), atol=1e-6)
    # attention over patches + group tokens sums to one per fold
    assert float(g["scores"][...].sum() + g["group_scores"][...].sum()) == pytest.approx(1.0, abs=1e-4)


def _run(args):
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


def test_cli_predict(run_dir, syn_store, tmp_path, capsys):
    assert _run(["predict", str(run_dir), str(syn_store), "--out", str(tmp_path / "o"), "--slide", "slide_003",
                 "-q"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "o" / "predictions.csv")))
    assert [r["slide_id"] for r in rows] == ["slide_003"]
    assert {"p_tumor@r0_f0", "p_tumor@r0_f1"} <= set(rows[0])
    assert _run(["predict", str(tmp_path), str(syn_store), "--out", str(tmp_path / "x")]) == 2
    assert "no checkpoint found" in capsys.readouterr().err
    assert _run(["predict", str(run_dir), str(syn_store), "--out", str(tmp_path / "y"), "--slide", "nope"]) == 2

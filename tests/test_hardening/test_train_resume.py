"""`samtrain fit` killed with SIGKILL mid-epoch resumes from its checkpoint and ends with the results of an
uninterrupted run (same seed); a store corrupted after conversion stops training with the slide and file named."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys

import pytest

from ._helpers import REPO, cli_env

pytest.importorskip("trainer.run")
from trainer.synthetic import make_synthetic_store  # noqa: E402

FIT = ["--folds", "2", "--max-epochs", "3", "--threads", "1", "--seed", "5", "-q"]

# Runs `samtrain fit` and SIGKILLs itself in the middle of the K-th training epoch (after 2 bags' steps).
KILLER = """
import os, signal, sys
import trainer.run as R
K = int(sys.argv[1]); real = R.train_one_epoch; seen = {"epochs": 0}
def train_one_epoch(*a, on_step=None, **k):
    seen["epochs"] += 1
    def step(i):
        if on_step is not None:
            on_step(i)
        if seen["epochs"] == K and i == 1:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, on_step=step, **k)
R.train_one_epoch = train_one_epoch
from trainer.cli import main
main(sys.argv[2:])
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_synthetic_store(tmp_path_factory.mktemp("trs") / "cohort.zarr", n_slides=24, n_side=6, dim=8,
                                signal=3.0, seed=3)


def _fit(store, out, *extra, killer_epoch=None):
    args = ["fit", str(store), "--out", str(out), *FIT, *extra]
    cmd = ([sys.executable, "-c", KILLER, str(killer_epoch), *args] if killer_epoch
           else [sys.executable, "-m", "trainer", *args])
    return subprocess.run(cmd, cwd=str(REPO), env=cli_env(), capture_output=True, text=True, timeout=300)


def _results(out):
    res = json.loads((out / "results.json").read_text())
    folds = [{k: f[k] for k in ("split", "val", "test", "best_epoch")} for f in res["folds"]]
    per_fold = {}
    for f in res["folds"]:
        d = out / f"fold_{f['split']}"
        per_fold[f["split"]] = ([(r["epoch"], r["train_loss"], r["val_auc"], r["val_loss"])
                                 for r in csv.DictReader(open(d / "metrics.csv"))],
                                (d / "predictions.csv").read_text())
    return folds, per_fold


def test_fit_killed_mid_epoch_resumes_to_the_same_results(store, tmp_path):
    ref = _fit(store, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    # 3 epochs per fold: epoch 5 = fold 2, its 2nd epoch (fold 1 done, fold 2's last.pt holds epoch 1)
    p = _fit(store, tmp_path / "run", killer_epoch=5)
    assert p.returncode == -signal.SIGKILL, p.stderr
    run = tmp_path / "run"
    assert (run / "fold_r0_f0/done.json").exists() and not (run / "fold_r0_f1/done.json").exists()
    assert (run / "fold_r0_f1/last.pt").exists() and not (run / "results.json").exists()
    p = _fit(store, run)  # the same command again
    assert p.returncode == 0, p.stderr
    assert json.loads((run / "results.json").read_text()).get("resumed") in (True, None)
    got_folds, got = _results(run)
    ref_folds, want = _results(tmp_path / "ref")
    assert got_folds == ref_folds
    assert got == want  # every epoch's losses / AUCs and every prediction, bit for bit


@pytest.mark.parametrize("damage", ["truncated-shard", "garbled-metadata"])
def test_corrupt_store_array_at_training_time(store, tmp_path, damage):
    import shutil

    from clam2sam.store import open_store

    bad = tmp_path / "bad.zarr"
    shutil.copytree(store, bad)
    sid = open_store(bad).slide_ids()[3]
    arr = bad / "slides" / sid / "features"
    shard = next(p for p in arr.rglob("*") if p.is_file() and p.name != "zarr.json")
    if damage == "truncated-shard":
        shard.write_bytes(shard.read_bytes()[:-40])
    else:
        (arr / "zarr.json").write_text('{"zarr_format": 3, "node_type": "array", "shape": [')
    p = _fit(bad, tmp_path / "out")
    err = p.stderr[-3000:]
    assert p.returncode == 1, (p.returncode, err)
    assert "Traceback" not in err and f"slide {sid!r}" in err and "features" in err, err
    assert str(bad) in err.replace("\n", "") and "re-convert" in err, err

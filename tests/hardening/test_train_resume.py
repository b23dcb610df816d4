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
from fixtures.synthetic import make_synthetic_store  # noqa: E402

FIT = ["--folds", "2", "--max-epochs", "3", "--threads", "1", "--seed", "5", "-q"]

# Runs `samtrain fit` and SIGKILLs itself in the middle of the K-th training epoch (after 2 bags' steps).
KILLER = """
import os, signal, sys
import trainer.fold as R
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
from trainer.cli.main import main
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

    from clam2sam.store.writer import open_store

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


# ------------------------------------------------------------------------------------------ every write point

# Runs `samtrain fit` and SIGKILLs itself at a write point: "<when>:<file name>:<n>" = the n-th time a file of
# that name is put in place with os.replace (before: its temporary is written, not renamed; after: renamed,
# nothing after it) or written with Path.write_text (write: just written).
WRITE_KILLER = """
import os, pathlib, signal, sys
when, name, n = sys.argv[1].split(":")
seen = [0]
def hit(kind, dst):
    if kind != when or os.path.basename(str(dst)) != name:
        return
    seen[0] += 1
    if seen[0] == int(n):
        os.kill(os.getpid(), signal.SIGKILL)
real_replace, real_write_text = os.replace, pathlib.Path.write_text
def replace(src, dst, *a, **k):
    hit("before", dst)
    real_replace(src, dst, *a, **k)
    hit("after", dst)
def write_text(self, *a, **k):
    r = real_write_text(self, *a, **k)
    hit("write", self)
    return r
os.replace, pathlib.Path.write_text = replace, write_text
from trainer.cli.main import main
main(sys.argv[2:])
"""

# 2 folds x 3 epochs: config and splits written; fold 1's first checkpoint before its rename; fold 1 epoch 2's
# metrics in place (its checkpoint not yet); fold 1's 2nd best model before its rename; fold 2 after its first
# epoch; each fold's done record before its rename (predictions written); results before and after their rename.
WRITE_POINTS = ["write:config.json:1", "write:splits.json:1", "before:last.pt:1", "after:metrics.csv:2",
                "before:best.pt:2", "after:last.pt:4", "before:done.json:1", "before:done.json:2",
                "before:results.json:1", "after:results.json:1"]
VOLATILE_RESULTS = {"resumed", "config"}     # and every "*seconds" timing


def _stable(d):
    """A results / done record without timings, the resume flag and the config (holds --out)."""
    if isinstance(d, dict):
        return {k: _stable(v) for k, v in d.items() if k not in VOLATILE_RESULTS and not k.endswith("seconds")}
    if isinstance(d, list):
        return [_stable(v) for v in d]
    return d


def _bytes_without_timings(p):
    """A file's bytes; for a CSV with timing columns (``*seconds``), its rows without them (every other value as
    written, byte for byte)."""
    data = p.read_bytes()
    if p.suffix != ".csv":
        return data
    rows = list(csv.reader(data.decode().splitlines()))
    keep = [i for i, h in enumerate(rows[0] if rows else []) if not h.endswith("seconds")]
    return [[r[i] for i in keep if i < len(r)] for r in rows]


def _files(out):
    """Every per-fold file a run keeps (bytes), and results.json / done.json without timings or resume flag."""
    res = json.loads((out / "results.json").read_text())
    files = {str(p.relative_to(out)): _bytes_without_timings(p) for p in sorted(out.glob("fold_*/*"))
             if p.suffix in (".csv", ".json") and p.name != "done.json"}
    done = {str(p.relative_to(out)): _stable(json.loads(p.read_text())) for p in sorted(out.glob("fold_*/done.json"))}
    return _stable(res), files, done, (out / "summary.md").read_text()


@pytest.mark.slow
def test_fit_killed_at_every_write_point_resumes_to_identical_results(store, tmp_path):
    assert len({p.split(":")[1] for p in WRITE_POINTS}) >= 6
    ref = _fit(store, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    want = _files(tmp_path / "ref")
    procs = {}
    for point in WRITE_POINTS:                       # killed runs in parallel, one run directory each
        out = tmp_path / point.replace(":", "_")
        args = ["fit", str(store), "--out", str(out), *FIT]
        procs[point] = (out, subprocess.Popen([sys.executable, "-c", WRITE_KILLER, point, *args], cwd=str(REPO),
                                              env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                              text=True))
    for point, (out, p) in procs.items():
        _, err = p.communicate(timeout=600)
        assert p.returncode == -signal.SIGKILL, (point, p.returncode, err[-2000:])
        again = _fit(store, out)                     # the same command, no flag
        assert again.returncode == 0, (point, again.stderr[-2000:])
        got = _files(out)
        assert got[0] == want[0], point
        assert got[1] == want[1], (point, sorted(k for k in want[1] if got[1].get(k) != want[1][k]))
        assert got[2] == want[2] and got[3] == want[3], point
        assert not list(out.rglob("*.tmp")), point   # no temporary left behind

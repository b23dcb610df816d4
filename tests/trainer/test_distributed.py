"""trainer.distributed: a 2-process gloo run under torchrun equals the single-process run; rank 0 writes alone."""
import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from clam2sam.errors import UsageError
from trainer.config import TrainConfig
from trainer.distributed import SINGLE, DistContext, ShardedOrderSampler, init_from_env
from trainer.loop import Predictions
from trainer.run import run_fit
from fixtures.synthetic import make_synthetic_store

ROOT = Path(__file__).resolve().parents[2]
# abmil without dropout trains deterministically, so DDP must reproduce the single-process numbers:
# --batch-size 2 = one bag per rank per step with 2 ranks, 2 consecutive bags of the order in one process
FIT = dict(folds=2, max_epochs=2, batch_size=2, model="abmil", dropout=0.0, threads=1, quiet=True)
FIT_ARGS = ["--folds", "2", "--max-epochs", "2", "--batch-size", "2", "--model", "abmil", "--dropout", "0",
            "--threads", "1", "-q"]

# Loaded by every torchrun worker (PYTHONPATH): logs each file write / rename under the run directory.
AUDIT = textwrap.dedent("""
    import atexit, json, os, sys
    _run, _log = os.environ.get("AUDIT_RUN"), os.environ.get("AUDIT_LOG")
    if _run and _log and "RANK" in os.environ:
        _events = []
        def _hook(event, args):
            if event == "open" and isinstance(args[0], str) and isinstance(args[1], str) and \\
                    any(c in args[1] for c in "wax+"):
                path = args[0]
            elif event == "os.rename":
                path = os.fspath(args[1])
            else:
                return
            if os.path.abspath(path).startswith(_run):
                _events.append([event, os.path.relpath(os.path.abspath(path), _run)])
        sys.addaudithook(_hook)
        atexit.register(lambda: open(f"{_log}.rank{os.environ['RANK']}", "w").write(json.dumps(_events)))
""")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_synthetic_store(tmp_path_factory.mktemp("ddp") / "c.zarr", n_slides=20, n_side=5, dim=8, seed=5)


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _files(run):
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


def test_torchrun_gloo_two_ranks_equals_single_process(store, tmp_path):
    single = tmp_path / "single"
    ref = run_fit(TrainConfig(store=str(store), out=str(single), **FIT))
    assert ref["distributed"] == {"world_size": 1, "backend": None}

    run, dbg, audit = tmp_path / "ddp", tmp_path / "dbg", tmp_path / "audit"
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(AUDIT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(audit), str(ROOT)]), "OMP_NUM_THREADS": "1",
           "SAMTRAIN_DDP_DEBUG_DIR": str(dbg), "AUDIT_RUN": str(run), "AUDIT_LOG": str(tmp_path / "writes")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "trainer.cli.main", "fit", str(store), "--out", str(run), *FIT_ARGS]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-4000:]

    # parameters identical on both ranks after each fold's training (hashes logged by each rank)
    logs = {r: [json.loads(x) for x in (dbg / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    assert [e["tag"] for e in logs[0]] == [e["tag"] for e in logs[1]] == ["training fold r0_f0",
                                                                        "training fold r0_f1"]
    for a, b in zip(logs[0], logs[1]):
        assert a["hash"] == b["hash"] and a["all"] == [a["hash"]] * 2 and a["world_size"] == 2
    assert logs[0][0]["hash"] != logs[0][1]["hash"]

    # results written once, by rank 0 only
    writes = {r: json.loads(Path(f"{tmp_path / 'writes'}.rank{r}").read_text()) for r in (0, 1)}
    assert writes[1] == [], writes[1]
    assert writes[0].count(["os.rename", "results.json"]) == 1
    assert sum(1 for e in writes[0] if e[1] == "fold_r0_f0/best.pt") >= 1

    # the same outputs as the single-process run: same files, same splits, same numbers
    assert _files(run) == _files(single)
    res = json.loads((run / "results.json").read_text())
    assert res["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert json.loads((run / "splits.json").read_text()) == json.loads((single / "splits.json").read_text())
    for fold in ("fold_r0_f0", "fold_r0_f1"):
        n_train = json.loads((run / fold / "done.json").read_text())["n_train"]
        assert n_train % 2 == 0  # no padded bag: the comparison below is exact
        a, b = _csv(single / fold / "predictions.csv"), _csv(run / fold / "predictions.csv")
        assert [(r["split"], r["slide_id"]) for r in a] == [(r["split"], r["slide_id"]) for r in b]
        np.testing.assert_allclose([float(r["p_tumor"]) for r in a], [float(r["p_tumor"]) for r in b], atol=2e-5)
        ma, mb = _csv(single / fold / "metrics.csv"), _csv(run / fold / "metrics.csv")
        assert len(ma) == len(mb) == 2
        for x, y in zip(ma, mb):
            assert float(x["train_loss"]) == pytest.approx(float(y["train_loss"]), abs=1e-5)
            assert float(x["val_loss"]) == pytest.approx(float(y["val_loss"]), abs=1e-5)
            assert x["val_auc"] == y["val_auc"] and x["improved"] == y["improved"]
    for fa, fb in zip(ref["folds"], res["folds"]):
        assert fa["test"]["auc"] == pytest.approx(fb["test"]["auc"], abs=1e-6)
        assert fa["best_epoch"] == fb["best_epoch"] and fa["n_test"] == fb["n_test"]


def test_sharded_order_sampler_deals_the_order_out():
    order = [5, 2, 7, 0, 3, 1, 6]
    shards = [list(ShardedOrderSampler(order, 3, r)) for r in range(3)]
    assert shards == [[5, 0, 6], [2, 3, 5], [7, 1, 2]]  # padded by wrapping: 9 = 3 steps x 3 ranks
    assert all(len(ShardedOrderSampler(order, 3, r)) == 3 for r in range(3))
    assert sorted(set(sum(shards, []))) == sorted(order)
    # one step (rank 0..W-1 at the same position) covers W consecutive bags of the order
    two = [list(ShardedOrderSampler(order[:6], 2, r)) for r in range(2)]
    assert [sorted((two[0][s], two[1][s])) for s in range(3)] == [[2, 5], [0, 7], [1, 3]]


class _FakeRanks(DistContext):
    """A rank-0 context whose all_gather returns prepared per-rank objects (no process group)."""

    def __init__(self, others):
        super().__init__(rank=0, world_size=len(others) + 1, backend="fake")
        self.others = others

    def all_gather(self, obj):
        return [obj, *self.others]


def test_gather_predictions_restores_dataset_order_and_reduces_stats():
    n = 5  # rank 0 scores 0, 2, 4; rank 1 scores 1, 3
    p0 = Predictions(["a", "c", "e"], np.array([0, 0, 1]), np.array([[.9, .1], [.8, .2], [.3, .7]]), 0.5)
    p1 = Predictions(["b", "d"], np.array([1, 0]), np.array([[.4, .6], [.6, .4]]), 1.0)
    ctx = _FakeRanks([([1, 3], p1)])
    assert ctx.eval_indices(n) == [0, 2, 4]
    g = ctx.gather_predictions(p0, n)
    assert g.slide_ids == ["a", "b", "c", "d", "e"] and g.y.tolist() == [0, 1, 0, 0, 1]
    np.testing.assert_allclose(g.prob[:, 1], [.1, .6, .2, .4, .7])
    assert g.loss == pytest.approx((0.5 * 3 + 1.0 * 2) / 5)
    st = _FakeRanks([({"train_loss": 3.0, "train_seconds": 9.0}, 2)]).reduce_train_stats(
        {"train_loss": 1.0, "train_seconds": 4.0}, 2)
    assert st == {"train_loss": 2.0, "train_seconds": 9.0}
    assert _FakeRanks([None]).accumulate(4) == 2 and SINGLE.accumulate(4) == 4


def test_single_process_context_is_a_no_op(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    ctx = init_from_env("cpu")
    assert ctx is SINGLE and not ctx.enabled and ctx.is_main and ctx.device() is None
    order = [3, 1, 2]
    assert ctx.train_sampler(order) is order and ctx.eval_indices(3) is None
    assert ctx.rank0_call(lambda: 7) == 7 and ctx.broadcast("x") == "x" and ctx.all_gather(1) == [1]
    with pytest.raises(UsageError, match="torchrun"):
        init_from_env("cpu", require=True)

"""Run driver: outputs, resume == uninterrupted, honest threshold end to end."""
import csv
import json

import pytest

from trainer import fold as run_mod
from trainer.config import TrainConfig
from trainer.run import run_fit


def _cfg(store, out, **kw):
    base = dict(store=str(store), out=str(out), folds=2, max_epochs=3, quiet=True, threads=1, cache=True, seed=5)
    base.update(kw)
    return TrainConfig(**base)


def test_resume_gives_same_results_as_uninterrupted(syn_store, tmp_path, monkeypatch):
    ref = run_fit(_cfg(syn_store, tmp_path / "a"))
    # interrupt during fold 2, epoch 2 (after fold 1 finished and last.pt of epoch 1 was written)
    calls = {"n": 0}
    real = run_mod.train_one_epoch

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(run_mod, "train_one_epoch", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_fit(_cfg(syn_store, tmp_path / "b"))
    assert (tmp_path / "b/fold_r0_f0/done.json").exists() and not (tmp_path / "b/fold_r0_f1/done.json").exists()
    monkeypatch.setattr(run_mod, "train_one_epoch", real)
    res = run_fit(_cfg(syn_store, tmp_path / "b"))
    assert res["resumed"] is True
    for fa, fb in zip(ref["folds"], res["folds"]):
        for k in ("val", "test", "test_optimistic", "best_epoch"):
            assert fa[k] == fb[k]
    for fold in ("fold_r0_f0", "fold_r0_f1"):
        ra = list(csv.DictReader(open(tmp_path / "a" / fold / "metrics.csv")))
        rb = list(csv.DictReader(open(tmp_path / "b" / fold / "metrics.csv")))
        assert [(r["train_loss"], r["val_auc"]) for r in ra] == [(r["train_loss"], r["val_auc"]) for r in rb]
        assert (tmp_path / "a" / fold / "predictions.csv").read_text() == \
               (tmp_path / "b" / fold / "predictions.csv").read_text()


def test_outputs_and_honest_threshold(syn_store, tmp_path):
    run_fit(_cfg(syn_store, tmp_path / "r", model="abmil", max_epochs=2))
    out = tmp_path / "r"
    for name in ("config.json", "splits.json", "results.json", "summary.md"):
        assert (out / name).is_file()
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"]["test"]["auc"]["n"] == 2
    for f in saved["folds"]:
        d = out / f"fold_{f['split']}"
        assert {"best.pt", "last.pt", "metrics.csv", "predictions.csv", "done.json"} <= {p.name for p in d.iterdir()}
        # the threshold used on test is the one recomputed from the validation predictions
        rows = list(csv.DictReader(open(d / "predictions.csv")))
        from trainer.metrics import youden_threshold
        import numpy as np
        val = [r for r in rows if r["split"] == "val"]
        thr = youden_threshold(np.array([r["label"] == "tumor" for r in val], int),
                               np.array([float(r["p_tumor"]) for r in val]))
        assert f["test"]["threshold"] == pytest.approx(thr, abs=1e-5)
    splits = json.loads((out / "splits.json").read_text())
    for s in splits:
        assert not set(s["test"]) & (set(s["train"]) | set(s["val"]))
    assert TrainConfig.load(out / "config.json").group_features is False


def test_changed_settings_refused_without_overwrite(syn_store, tmp_path):
    from clam2sam.errors import UsageError

    run_fit(_cfg(syn_store, tmp_path / "r", model="abmil", max_epochs=1))
    with pytest.raises(UsageError, match="lr"):
        run_fit(_cfg(syn_store, tmp_path / "r", model="abmil", max_epochs=1, lr=1e-3))


def test_the_loop_tells_the_model_each_epoch_so_the_mask_warmup_ramps(syn_store, tmp_path, monkeypatch):
    from trainer.models.sam_mil import SAMMIL

    seen = []
    real = SAMMIL.mask_scale

    def spy(self):
        seen.append((self.epoch, real(self)))
        return real(self)

    monkeypatch.setattr(SAMMIL, "mask_scale", spy)
    run_fit(_cfg(syn_store, tmp_path / "w", model="sam-mil", mask_warmup=2, max_epochs=3, folds=2))
    per_epoch = sorted(set(seen))
    assert per_epoch == [(0, 0.0), (1, 0.5), (2, 1.0)]
    assert [e for e, _ in seen].count(0) == [e for e, _ in seen].count(2) > 0   # both folds, every bag

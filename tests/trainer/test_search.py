"""Nested selection (--search / --inits): parsing, candidates, and a fit that chooses on validation only."""
import json

import pytest

from clam2sam.errors import UsageError
from trainer.config import TrainConfig
from trainer.run import run_fit
from trainer.search import candidates, parse_search, pick


def test_parse_search_values_and_errors():
    assert parse_search(["beta=0,1e-3", "--max-instance-weight=0,0.5", "pseudo-bags=3,5"]) == {
        "beta": [0.0, 0.001], "max_instance_weight": [0.0, 0.5], "pseudo_bags": [3, 5]}
    for bad, words in (("beta", "NAME=V1"), ("model=abmil", "cannot be searched"), ("beta=a,b", "numbers"),
                       ("beta=1,1", "twice")):
        with pytest.raises(UsageError, match=words):
            parse_search([bad])


def test_candidates_are_the_grid_times_inits_in_a_fixed_order():
    c = candidates({"beta": [0.0, 0.1], "lr": [1e-3]}, inits=2)
    assert [(x["params"]["beta"], x["params"]["lr"], x["init"]) for x in c] == [
        (0.0, 1e-3, 0), (0.0, 1e-3, 1), (0.1, 1e-3, 0), (0.1, 1e-3, 1)]
    assert candidates({}, 3) == [{"params": {}, "init": 0}, {"params": {}, "init": 1}, {"params": {}, "init": 2}]


def test_pick_uses_validation_auc_then_loss():
    r = [{"val": {"auc": 0.8, "loss": 0.3}}, {"val": {"auc": 0.9, "loss": 0.9}}, {"val": {"auc": 0.9, "loss": 0.5}}]
    assert pick(r) == 2
    assert pick(r, "loss") == 0
    assert pick([{"val": {"auc": float("nan"), "loss": 0.7}}, {"val": {"auc": 0.6, "loss": 0.4}}]) == 1


def test_fit_with_search_chooses_on_validation_and_records_it(syn_store, tmp_path):
    out = tmp_path / "r"
    cfg = TrainConfig(store=str(syn_store), out=str(out), model="sam-mil", folds=2, max_epochs=2, quiet=True,
                      threads=1, cache=True, seed=1, search={"beta": [0.0, 1.0]}, inits=2, reinit_below=0)
    res = run_fit(cfg)
    for f in res["folds"]:
        s = f["search"]
        assert len(s["candidates"]) == 4
        # the chosen candidate is the validation argmax among the recorded candidates
        assert s["chosen"] == pick([{"val": {"auc": c["val_auc"], "loss": c["val_loss"]}} for c in s["candidates"]])
        fold_dir = out / f"fold_{f['split']}"
        chosen = json.loads((fold_dir / f"cand_{s['chosen']:02d}" / "done.json").read_text())
        assert f["test"]["auc"] == chosen["test"]["auc"]            # the fold reports the chosen candidate
        assert (fold_dir / "best.pt").read_bytes() == (fold_dir / f"cand_{s['chosen']:02d}" / "best.pt").read_bytes()
        assert s["chosen_params"] == s["candidates"][s["chosen"]]["params"]
        # each candidate really trained with its own beta
        for i, c in enumerate(s["candidates"]):
            cfg_i = json.loads((fold_dir / f"cand_{i:02d}" / "done.json").read_text())
            assert cfg_i["val"]["auc"] == c["val_auc"]
    assert "chosen on validation" in (out / "summary.md").read_text()
    # resume: a second call reads every fold back without training
    again = run_fit(cfg)
    assert [f["search"]["chosen"] for f in again["folds"]] == [f["search"]["chosen"] for f in res["folds"]]


def test_needs_reinit_only_when_every_start_failed_on_validation():
    from trainer.search import needs_reinit

    assert needs_reinit([{"val": {"auc": 0.72}}], 0.8)
    assert not needs_reinit([{"val": {"auc": 0.72}}, {"val": {"auc": 0.95}}], 0.8)
    assert not needs_reinit([{"val": {"auc": 0.72}}], 0.0)                       # off
    assert not needs_reinit([{"val": {"auc": float("nan")}}], 0.8)               # undefined: never asks
    assert not needs_reinit([{"val": {"auc": 0.8}}], 0.8)


def _reinit_cfg(store, out, **kw):
    base = dict(store=str(store), out=str(out), model="abmil", folds=2, max_epochs=2, quiet=True, threads=1,
                cache=True, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_a_failed_start_gets_another_initialisation_and_validation_keeps_the_best(syn_store, tmp_path, monkeypatch):
    import trainer.fold as fold_mod

    plain = run_fit(_reinit_cfg(syn_store, tmp_path / "plain", reinit_below=0))
    # every start "fails" until two were trained: the fold's first model moves to cand_00, a second follows
    monkeypatch.setattr(fold_mod, "needs_reinit", lambda results, below: len(results) < 2)
    res = run_fit(_reinit_cfg(syn_store, tmp_path / "re", reinit_below=0.8, max_inits=3))
    for f, p in zip(res["folds"], plain["folds"]):
        fd = tmp_path / "re" / f"fold_{f['split']}"
        s = f["search"]
        assert [c["init"] for c in s["candidates"]] == [0, 1] and s["reinit_below"] == 0.8
        first = json.loads((fd / "cand_00" / "done.json").read_text())
        assert first["val"] == p["val"] and first["test"] == p["test"]          # init 0 = the plain fold's model
        second = json.loads((fd / "cand_01" / "done.json").read_text())
        assert second["val"] != first["val"] or second["best_epoch"] != first["best_epoch"] or \
            (fd / "cand_01" / "metrics.csv").read_text() != (fd / "cand_00" / "metrics.csv").read_text()
        k = s["chosen"]
        assert k == pick([first, second])
        assert (fd / "predictions.csv").read_text() == (fd / f"cand_{k:02d}" / "predictions.csv").read_text()
        assert not any(p.name.endswith(".tmp") for p in fd.iterdir())
    # a re-run resumes: nothing is trained again and the answer is the same
    monkeypatch.setattr(fold_mod, "run_fold", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    again = run_fit(_reinit_cfg(syn_store, tmp_path / "re", reinit_below=0.8, max_inits=3))
    assert [f["search"]["chosen"] for f in again["folds"]] == [f["search"]["chosen"] for f in res["folds"]]


def test_a_crash_after_the_first_start_moved_resumes_from_the_candidates(syn_store, tmp_path, monkeypatch):
    import trainer.fold as fold_mod

    monkeypatch.setattr(fold_mod, "needs_reinit", lambda results, below: len(results) < 2)
    ref = run_fit(_reinit_cfg(syn_store, tmp_path / "a", reinit_below=0.8, max_inits=2))
    real = fold_mod.run_fold

    def crash_on_second(cfg, cohort, split, in_dim, device, fold_dir, *a, **k):
        if fold_dir.name == "cand_01":
            raise KeyboardInterrupt
        return real(cfg, cohort, split, in_dim, device, fold_dir, *a, **k)

    monkeypatch.setattr(fold_mod, "run_fold", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_fit(_reinit_cfg(syn_store, tmp_path / "b", reinit_below=0.8, max_inits=2))
    fd = tmp_path / "b" / "fold_r0_f0"
    assert (fd / "cand_00" / "done.json").exists() and not (fd / "done.json").exists()
    monkeypatch.setattr(fold_mod, "run_fold", real)
    res = run_fit(_reinit_cfg(syn_store, tmp_path / "b", reinit_below=0.8, max_inits=2))
    for fa, fb in zip(ref["folds"], res["folds"]):
        assert fa["search"] == fb["search"] and fa["test"] == fb["test"]


def test_a_fold_that_trained_well_is_not_reinitialised(syn_store, tmp_path):
    off = run_fit(_reinit_cfg(syn_store, tmp_path / "off", reinit_below=0))
    worst = min(f["val"]["auc"] for f in off["folds"])          # every fold reaches this: none is retried
    assert worst > 0
    on = run_fit(_reinit_cfg(syn_store, tmp_path / "on", reinit_below=worst, max_inits=3))
    for a, b in zip(off["folds"], on["folds"]):
        assert "search" not in b and a["test"] == b["test"]
    assert not list((tmp_path / "on").glob("fold_*/cand_*"))

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
                      threads=1, cache=True, seed=1, search={"beta": [0.0, 1.0]}, inits=2)
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

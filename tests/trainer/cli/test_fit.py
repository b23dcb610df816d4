"""``samtrain fit`` end to end through the real entry point (exit codes via clam2sam.cli.main.run_cli)."""
import json

import pytest

from trainer.cli.main import main


def _run(args):
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


def test_fit_writes_valid_outputs(syn_store, tmp_path, capsys):
    out = tmp_path / "run"
    code = _run(["fit", str(syn_store), "--out", str(out), "--folds", "2", "--max-epochs", "2", "--threads", "1",
                 "-q", "--json"])
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert res["config"]["model"] == "sam-mil" and res["config"]["group_features"] is True
    assert len(res["folds"]) == 2 and 0.0 <= res["summary"]["test"]["auc"]["mean"] <= 1.0
    assert json.loads((out / "config.json").read_text())["max_epochs"] == 2
    assert (out / "fold_r0_f0" / "best.pt").is_file() and (out / "fold_r0_f1" / "metrics.csv").is_file()
    # re-running the same command resumes (all folds done) and exits 0
    assert _run(["fit", str(syn_store), "--out", str(out), "--folds", "2", "--max-epochs", "2", "--threads", "1",
                 "-q"]) == 0
    assert "OPTIMISTIC" in capsys.readouterr().err


def test_missing_store_is_usage_error(tmp_path, capsys):
    assert _run(["fit", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "r")]) == 2


def test_unknown_model_is_usage_error(syn_store, tmp_path, capsys):
    assert _run(["fit", str(syn_store), "--out", str(tmp_path / "r"), "--model", "nope"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_labels_csv_with_unknown_slides(syn_store, tmp_path, capsys):
    csv = tmp_path / "l.csv"
    csv.write_text("slide_id,label\nslide_000,normal\nghost_7,tumor\n")
    assert _run(["fit", str(syn_store), "--out", str(tmp_path / "r"), "--labels", str(csv)]) == 2
    assert "ghost_7" in capsys.readouterr().err


def test_not_a_store_is_error_exit_1(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _run(["fit", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 1
    assert "not a clam2sam store" in capsys.readouterr().err


def test_list_models(capsys):
    assert _run(["fit", "--list-models"]) == 0
    assert {"abmil", "sam-mil"} <= set(capsys.readouterr().out.split())


@pytest.mark.parametrize("switches", [
    ["--reference-sigmoid"],
    ["--mask", "random"], ["--mask", "non-group"], ["--mask", "none"],
    ["--ratio-fn", "linear"], ["--ratio-fn", "constant"],
    ["--num-workers", "2"], ["--batch-size", "4"], ["--repeats", "2"],
    ["--con-form", "reference-l2", "--con-unassigned"], ["--no-group-features", "--alpha", "0", "--beta", "0"],
])
def test_every_switch_runs_through_the_cli(syn_store, tmp_path, capsys, switches):
    """Each documented switch trains and writes results (1 epoch, 2 folds; values checked elsewhere)."""
    out = tmp_path / "run"
    code = _run(["fit", str(syn_store), "--out", str(out), "--folds", "2", "--max-epochs", "1", "--threads", "1",
                 "-q", "--json", *switches])
    assert code == 0, capsys.readouterr().err
    res = json.loads(capsys.readouterr().out)
    n_rep = 2 if "--repeats" in switches else 1
    assert len(res["folds"]) == 2 * n_rep
    assert all(0.0 <= f["test"]["auc"] <= 1.0 for f in res["folds"] if f["test"]["auc"] == f["test"]["auc"])

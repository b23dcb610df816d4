"""samtrain never drops a slide silently: which slides are left out and why (warning, summary, results.json
``excluded_slides``); a damaged slide is an error unless ``--skip-damaged``; a labels CSV that is not UTF-8 is a
clear usage error (exit 2), not a traceback."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clam2sam.inspect.checks import check_store
from clam2sam.errors import StoreError, UsageError
from clam2sam.store.writer import open_store
from trainer.cohort import load_cohort, read_labels_csv
from fixtures.synthetic import make_synthetic_store

REPO = Path(__file__).resolve().parents[2]
FIT = ["--folds", "2", "--max-epochs", "1", "--threads", "1", "--seed", "5", "-q"]


def _set_attrs(store: Path, sid: str, **changes) -> None:
    zj = store / "slides" / sid / "zarr.json"
    meta = json.loads(zj.read_text())
    for k, v in changes.items():
        if v is None:
            meta["attributes"].pop(k, None)
        else:
            meta["attributes"][k] = v
    zj.write_text(json.dumps(meta))


@pytest.fixture()
def store(tmp_path):
    return make_synthetic_store(tmp_path / "s.zarr", n_slides=30, n_side=5, dim=8, seed=4)


def test_unlabelled_slides_are_listed_with_reason(store):
    ids = open_store(store).slide_ids()
    for sid in ids[:3]:
        _set_attrs(store, sid, label=None)
    c = load_cohort(str(store))
    assert c.slide_ids == ids[3:]
    assert c.excluded == [{"slide_id": s, "reason": "no label in the store"} for s in ids[:3]]


def test_slides_missing_from_labels_csv_are_listed(store, tmp_path):
    ids = open_store(store).slide_ids()
    csv = tmp_path / "l.csv"
    csv.write_text("slide_id,label\n" + "".join(f"{s},{'a' if i % 2 else 'b'}\n" for i, s in enumerate(ids[2:])))
    c = load_cohort(str(store), str(csv))
    assert c.slide_ids == ids[2:]
    assert c.excluded == [{"slide_id": s, "reason": "not in the labels CSV"} for s in ids[:2]]


@pytest.mark.parametrize("damage", ["garbage-group", "garbage-array", "missing-array"])
def test_damaged_slide_is_an_error_unless_skipped(store, damage):
    import shutil

    ids = open_store(store).slide_ids()
    bad = ids[7]
    gdir = store / "slides" / bad
    if damage == "garbage-group":
        (gdir / "zarr.json").write_bytes(b"\x00garbage{{")
    elif damage == "garbage-array":
        (gdir / "segment_ids" / "zarr.json").write_text('{"zarr_format": 3, "node_')
    else:
        shutil.rmtree(gdir / "group_features")
    with pytest.raises(StoreError) as e:
        load_cohort(str(store))
    msg = str(e.value)
    assert f"'{bad}'" in msg and "damaged" in msg and "--skip-damaged" in msg, msg
    c = load_cohort(str(store), skip_damaged=True)
    assert bad not in c.slide_ids and len(c.slide_ids) == 29
    assert [x["slide_id"] for x in c.excluded] == [bad] and c.excluded[0]["reason"].startswith("damaged")
    if damage == "garbage-group":           # --check calls it damaged, not an interrupted conversion
        res = check_store(store)
        assert [p.slide for p in res.problems] == [bad]
        assert "damaged" in res.problems[0].message and "interrupted" not in res.problems[0].message


def test_incomplete_slide_is_listed_not_an_error(store):
    ids = open_store(store).slide_ids()
    _set_attrs(store, ids[0], complete=None)
    c = load_cohort(str(store))
    assert ids[0] not in c.slide_ids
    assert c.excluded[0]["slide_id"] == ids[0] and c.excluded[0]["reason"].startswith("incomplete")


def test_latin1_labels_csv_is_a_clear_error(tmp_path):
    p = tmp_path / "l.csv"
    p.write_bytes("slide_id,label\ns1,normal\ns2,tumör\n".encode("latin-1"))
    with pytest.raises(UsageError) as e:
        read_labels_csv(p)
    msg = str(e.value)
    assert "not UTF-8" in msg and "line 3" in msg and "0xf6" in msg and "iconv" in msg and str(p) in msg, msg
    p.write_bytes("slide_id,label\ns1,normal\ns2,tumör\n".encode("utf-16"))   # with a BOM: read
    assert read_labels_csv(p) == {"s1": ("normal", None), "s2": ("tumör", None)}


def _fit(store, out, *extra):
    return subprocess.run([sys.executable, "-m", "trainer", "fit", str(store), "--out", str(out), *FIT, *extra],
                          cwd=str(REPO), capture_output=True, text=True, timeout=300)


def test_fit_reports_left_out_slides_and_needs_skip_damaged(store, tmp_path):
    ids = open_store(store).slide_ids()
    for sid in ids[:3]:
        _set_attrs(store, sid, label=None)
    (store / "slides" / ids[10] / "zarr.json").write_text("not json")
    p = _fit(store, tmp_path / "r1")
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert f"'{ids[10]}'" in p.stderr and "--skip-damaged" in p.stderr, p.stderr[-2000:]
    p = _fit(store, tmp_path / "r2", "--skip-damaged")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "4 of 30 slides left out" in p.stderr and "3 no label in the store" in p.stderr, p.stderr[-3000:]
    res = json.loads((tmp_path / "r2" / "results.json").read_text())
    assert res["n_slides"] == 26
    got = {e["slide_id"]: e["reason"] for e in res["excluded_slides"]}
    assert set(got) == {*ids[:3], ids[10]} and got[ids[0]] == "no label in the store"
    assert got[ids[10]].startswith("damaged")
    summary = (tmp_path / "r2" / "summary.md").read_text()
    assert "4 slides of the store left out" in summary, summary


def test_fit_with_latin1_labels_exits_2_without_traceback(store, tmp_path):
    ids = open_store(store).slide_ids()
    csv = tmp_path / "l.csv"
    csv.write_bytes(("slide_id,label\n" + "".join(f"{s},{'tumör' if i % 2 else 'normal'}\n"
                                                  for i, s in enumerate(ids))).encode("latin-1"))
    p = _fit(store, tmp_path / "r", "--labels", str(csv))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "not UTF-8" in p.stderr and "iconv" in p.stderr, p.stderr

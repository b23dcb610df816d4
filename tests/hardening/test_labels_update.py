"""A corrected --dataset-csv updates the labels / case ids of complete slides in place and says so; the arrays are
untouched; samtrain's --labels still overrides the store without rewriting it."""
from __future__ import annotations

import numpy as np
import pytest

from clam2sam.store import schema
from clam2sam.convert.cohort import ConvertOptions, convert_cohort
from clam2sam.store.writer import open_store

from ._helpers import cohort, run_cli, store_snapshot


def _csv(path, rows):
    path.write_text("case_id,slide_id,label\n" + "".join(f"{c},{s},{lab}\n" for c, s, lab in rows))
    return path


@pytest.fixture
def converted(tmp_path):
    arch = tmp_path / "arch"
    cohort(arch, n_slides=3)
    csv = _csv(tmp_path / "d.csv", [("p0", "s0", "tumor"), ("p1", "s1", "normal"), ("p2", "s2", "normal")])
    out = tmp_path / "c.zarr"
    assert convert_cohort(ConvertOptions(archive=arch, out=out, dataset_csv=csv)).return_code == 0
    return arch, csv, out


def test_corrected_label_is_updated_in_place_and_reported(converted, tmp_path):
    arch, csv, out = converted
    before = store_snapshot(out)
    _csv(csv, [("p0", "s0", "tumor"), ("p1", "s1", "tumor"), ("p9", "s2", "normal")])  # s1 label, s2 case id fixed
    p = run_cli("convert", arch, "-o", out, "--dataset-csv", csv, "-q")
    assert p.returncode == 0, p.stderr
    assert "updated" in p.stderr and "for 2 complete slide(s): s1, s2" in p.stderr, p.stderr  # said even with -q
    r = open_store(out)
    assert [r.slide_attrs(s)["label"] for s in ("s0", "s1", "s2")] == ["tumor", "tumor", "normal"]
    assert [r.slide_attrs(s)["case_id"] for s in ("s0", "s1", "s2")] == ["p0", "p1", "p9"]
    after = store_snapshot(out)
    for sid in ("s0", "s1", "s2"):  # arrays bit-identical, only label/case_id differ among the attrs
        for n in schema.ALL_ARRAYS:
            np.testing.assert_array_equal(after["slides"][sid]["arrays"][n], before["slides"][sid]["arrays"][n])
        strip = lambda a: {k: v for k, v in a.items() if k not in ("label", "case_id")}  # noqa: E731
        assert strip(after["slides"][sid]["attrs"]) == strip(before["slides"][sid]["attrs"])
    # the report names each change; a second run changes nothing and says nothing
    rep = convert_cohort(ConvertOptions(archive=arch, out=out, dataset_csv=csv))
    assert rep.labels_updated == [] and rep.to_dict()["labels_updated"] == []
    p = run_cli("convert", arch, "-o", out, "--dataset-csv", csv, "-q")
    assert p.returncode == 0 and "updated" not in p.stderr


def test_report_lists_old_and_new_values(converted):
    arch, csv, out = converted
    _csv(csv, [("p0", "s0", "normal"), ("p1", "s1", "normal"), ("p2", "s2", "normal")])
    rep = convert_cohort(ConvertOptions(archive=arch, out=out, dataset_csv=csv))
    assert rep.labels_updated == ["s0"] and "labels updated for 1" in str(rep)
    assert any("slide 's0': label 'tumor' -> 'normal'" in w for w in rep.warnings), rep.warnings
    assert open_store(out).slide_attrs("s0")["label"] == "normal"


def test_without_csv_labels_stay(converted):
    arch, _, out = converted
    rep = convert_cohort(ConvertOptions(archive=arch, out=out))
    assert rep.labels_updated == [] and open_store(out).slide_attrs("s0")["label"] == "tumor"


def test_samtrain_labels_override_without_rewriting(converted, tmp_path):
    from trainer.data import load_cohort

    _, _, out = converted
    override = tmp_path / "override.csv"
    override.write_text("slide_id,label\ns0,normal\ns1,tumor\ns2,tumor\n")
    c = load_cohort(str(out), labels_csv=str(override))
    assert dict(zip(c.slide_ids, c.labels)) == {"s0": "normal", "s1": "tumor", "s2": "tumor"}
    assert open_store(out).slide_attrs("s0")["label"] == "tumor"  # the store is not rewritten

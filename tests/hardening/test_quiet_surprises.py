"""Inputs that could be dropped or mislabelled quietly: each must give an error or a warning that names it."""
from __future__ import annotations

import pytest

from clam2sam.convert.cohort import ConvertOptions, convert_cohort
from clam2sam.errors import InputFormatError, UsageError
from clam2sam.sources.process_list import read_dataset_csv
from clam2sam.store.writer import open_store
from clam2sam.convert.labels import case_clashes

from tests.clam2sam import archive_factory as af
from ._helpers import cohort, run_cli


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    root = tmp_path_factory.mktemp("quiet") / "arch"
    cohort(root, n_slides=3)
    return root


def test_hidden_feature_file_is_named_as_hidden(tmp_path):
    """`..evil.h5` was left out while no warning (or one saying 'no features') was given."""
    arch = tmp_path / "arch"
    cohort(arch, n_slides=2)
    af.write_features_h5(arch / "h5_files" / "..evil.h5", af.features(40), af.grid_coords(40))
    af.write_features_h5(arch / "h5_files" / "._s0.h5", af.features(40), af.grid_coords(40))  # macOS metadata
    rep = convert_cohort(ConvertOptions(archive=arch, out=tmp_path / "c.zarr"))
    hidden = [w for w in rep.warnings if "..evil.h5" in w]
    assert len(hidden) == 1 and "hidden file" in hidden[0] and "starts with '.'" in hidden[0], rep.warnings
    assert "rename" in hidden[0] and not any("no features" in w for w in rep.warnings)
    assert any("1 macOS metadata file(s) named '._*'" in w for w in rep.warnings), rep.warnings
    assert open_store(tmp_path / "c.zarr").slide_ids() == ["s0", "s1"]
    # listed in the process list and the dataset CSV: those warnings name the hidden file, not "no features"
    af.write_process_list(arch / "process_list_autogen.csv", ["s0.svs", "s1.svs", "..evil.svs"])
    csv = tmp_path / "d.csv"
    csv.write_text("case_id,slide_id,label\nc0,s0,a\nc1,s1,b\nc2,..evil,a\n")
    rep = convert_cohort(ConvertOptions(archive=arch, out=tmp_path / "c2.zarr", dataset_csv=csv))
    evil = [w for w in rep.warnings if "'..evil'" in w]
    assert len(evil) == 2 and all("hidden" in w and "..evil.h5" in w and "rename it" in w for w in evil), evil
    assert not any("no features" in w for w in rep.warnings), rep.warnings


def test_unknown_slide_is_an_error_and_creates_no_store(arch, tmp_path):
    out = tmp_path / "c.zarr"
    p = run_cli("convert", arch, "-o", out, "--slide", "nope", "-q")
    assert p.returncode == 2 and "'nope'" in p.stderr and "no such slide" in p.stderr, p.stderr
    assert "'s0'" in p.stderr and "Traceback" not in p.stderr  # shows what the archive has
    assert not out.exists()
    with pytest.raises(UsageError, match="'nope'"):  # one typo among good ids: still refused, nothing written
        convert_cohort(ConvertOptions(archive=arch, out=out, slides=("s0", "nope")))
    assert not out.exists()


def test_dataset_csv_matching_no_slide_is_an_error(arch, tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("case_id,slide_id,label\nc1,TCGA-01,tumor\nc2,TCGA-02,normal\n")
    out = tmp_path / "c.zarr"
    p = run_cli("convert", arch, "-o", out, "--dataset-csv", csv, "-q")
    assert p.returncode == 1 and "matches none of the 3 slides" in p.stderr, p.stderr
    assert "'TCGA-01'" in p.stderr and "'s0'" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()


def test_partly_matching_csv_warns_with_a_count(arch, tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("case_id,slide_id,label\nc0,s0,tumor\n")
    rep = convert_cohort(ConvertOptions(archive=arch, out=tmp_path / "c.zarr", dataset_csv=csv))
    assert rep.return_code == 0
    assert any("2 of 3 slides have no row" in w for w in rep.warnings), rep.warnings


def test_labels_are_stripped_and_case_clashes_reported(arch, tmp_path):
    """`Normal ` and `normal` must not become two classes silently: whitespace is stripped, a case-only
    difference is kept (it may be meant) but reported with counts."""
    csv = tmp_path / "d.csv"
    csv.write_text("case_id,slide_id,label\nc0,s0,Normal \nc1,s1, normal\nc2,s2,normal\t\n")
    assert [v["label"] for v in read_dataset_csv(csv).values()] == ["Normal", "normal", "normal"]
    out = tmp_path / "c.zarr"
    rep = convert_cohort(ConvertOptions(archive=arch, out=out, dataset_csv=csv))
    clash = [w for w in rep.warnings if "differ only in case" in w]
    assert len(clash) == 1 and "'Normal' (1 slide) and 'normal' (2 slides)" in clash[0], rep.warnings
    assert [open_store(out).slide_attrs(s)["label"] for s in ("s0", "s1", "s2")] == ["Normal", "normal", "normal"]
    assert case_clashes(["a", "b", None, "A"]) == ["'A' (1 slide) and 'a' (1 slide)"]
    assert case_clashes(["tumor", "normal"]) == []


def test_dataset_csv_without_label_column_names_the_option(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("case_id,slide_id,diagnosis\nc,s0,tumor\n")
    with pytest.raises(InputFormatError) as e:
        read_dataset_csv(csv)
    assert "--label-col" in str(e.value) and "'diagnosis'" in str(e.value)

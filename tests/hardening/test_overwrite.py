"""--overwrite replaces only a store clam2sam wrote, never a source, a folder holding one, a plain file or a
foreign folder; the old store is set aside until the new run has a complete slide, and put back otherwise."""
from __future__ import annotations

import json
import signal

import numpy as np
import pytest

from clam2sam.convert.cohort import ConvertOptions, convert_cohort
from clam2sam.errors import StoreExistsError, UsageError
from clam2sam.store.writer import open_store
from clam2sam.store.overwrite import ASIDE_NAME

from tests.clam2sam import archive_factory as af
from ._helpers import assert_same_store, cohort, run_cli, store_snapshot


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    root = tmp_path_factory.mktemp("ow") / "arch"
    cohort(root, n_slides=2)
    return root


def _tree(root):
    return af.file_hashes(root)


def test_out_holding_the_source_is_refused(tmp_path):
    """`convert X/src -o X --overwrite` must not delete the source archive inside X."""
    x = tmp_path / "X"
    cohort(x / "src", n_slides=2)
    (x / "notes.txt").write_text("mine")
    before = _tree(x)
    for flags in (("--overwrite",), ()):
        p = run_cli("convert", x / "src", "-o", x, "-q", *flags)
        assert p.returncode == 2, p.stderr
        assert "holds the source ARCHIVE" in p.stderr and "choose another --out" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
    assert _tree(x) == before  # nothing deleted, nothing written
    seg = x / "src" / "segments"
    with pytest.raises(UsageError, match="is the source --segments-dir"):  # --out = a source folder given by flag
        convert_cohort(ConvertOptions(archive=x / "src", segments_dir=seg, out=seg, overwrite=True))
    with pytest.raises(UsageError, match="holds the source --dataset-csv"):
        (x / "labels").mkdir()
        (x / "labels" / "d.csv").write_text("case_id,slide_id,label\nc,s0,a\n")
        before = _tree(x)
        convert_cohort(ConvertOptions(archive=x / "src", dataset_csv=x / "labels" / "d.csv", out=x / "labels",
                                      overwrite=True))
    assert _tree(x) == before


def test_folder_with_other_files_is_never_deleted(arch, tmp_path):
    """`convert base -o mydir --overwrite` must not delete mydir/thesis.tex."""
    mydir = tmp_path / "mydir"
    mydir.mkdir()
    (mydir / "thesis.tex").write_text("\\documentclass{article}")
    (mydir / "figs").mkdir()
    for flags in (("--overwrite",), ()):
        p = run_cli("convert", arch, "-o", mydir, "-q", *flags)
        assert p.returncode == 1 and "not a clam2sam store" in p.stderr and "thesis.tex" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
    assert "never deletes other files" in run_cli("convert", arch, "-o", mydir, "-q", "--overwrite").stderr
    assert sorted(q.name for q in mydir.iterdir()) == ["figs", "thesis.tex"]
    assert (mydir / "thesis.tex").read_text() == "\\documentclass{article}"


@pytest.mark.parametrize("flags", [("--overwrite",), ()], ids=["overwrite", "plain"])
def test_plain_file_is_never_replaced(arch, tmp_path, flags):
    """`-o some_file --overwrite` must not replace the file (nor, without the flag, show a NotADirectoryError traceback)."""
    f = tmp_path / "some_file"
    f.write_bytes(b"precious")
    p = run_cli("convert", arch, "-o", f, "-q", *flags)
    assert p.returncode == 1 and "is a file, not a clam2sam store" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and "choose another --out" in p.stderr
    assert f.read_bytes() == b"precious"


def test_symlink_and_foreign_zarr_refused(arch, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_text("x")
    link = tmp_path / "link.zarr"
    link.symlink_to(target)
    with pytest.raises(StoreExistsError, match="symbolic link"):
        convert_cohort(ConvertOptions(archive=arch, out=link, overwrite=True))
    foreign = tmp_path / "other.zarr"
    foreign.mkdir()
    (foreign / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    with pytest.raises(StoreExistsError, match="clam2sam did not write"):
        convert_cohort(ConvertOptions(archive=arch, out=foreign, overwrite=True))
    assert (target / "keep").exists() and (foreign / "zarr.json").exists()


def test_overwrite_replaces_a_store_and_keeps_the_sam_cache(arch, tmp_path):
    out = tmp_path / "c.zarr"
    convert_cohort(ConvertOptions(archive=arch, out=out, slides=("s0",)))
    (out / "sam_cache").mkdir()
    (out / "sam_cache" / "entry").write_text("cached")
    rep = convert_cohort(ConvertOptions(archive=arch, out=out, overwrite=True))
    assert [(o.slide_id, o.status) for o in rep.outcomes] == [("s0", "converted"), ("s1", "converted")]
    assert open_store(out).slide_ids() == ["s0", "s1"] and not (out / ASIDE_NAME).exists()
    assert (out / "sam_cache" / "entry").read_text() == "cached"


def test_damaged_store_can_be_overwritten(arch, tmp_path):
    """A store whose root zarr.json is damaged holds only a store's own entries: recognised, replaceable."""
    out = tmp_path / "c.zarr"
    convert_cohort(ConvertOptions(archive=arch, out=out))
    (out / "zarr.json").write_text("{trunc")
    rep = convert_cohort(ConvertOptions(archive=arch, out=out, overwrite=True))
    assert rep.return_code == 0 and open_store(out).slide_ids() == ["s0", "s1"]


def test_old_store_survives_a_kill_before_the_first_new_slide(arch, tmp_path):
    out = tmp_path / "c.zarr"
    convert_cohort(ConvertOptions(archive=arch, out=out))
    ref = store_snapshot(out)
    p = run_cli("convert", arch, "-o", out, "-q", "--overwrite", CLAM2SAM_TEST_KILL_AT="array:3")
    assert p.returncode == -signal.SIGKILL
    assert (out / ASIDE_NAME / "slides").is_dir()  # the old store waits aside, whole
    rep = convert_cohort(ConvertOptions(archive=arch, out=out))  # a plain re-run puts it back and resumes
    assert any("put back" in w for w in rep.warnings), rep.warnings
    assert [o.status for o in rep.outcomes] == ["skipped", "skipped"]
    assert not (out / ASIDE_NAME).exists()
    assert_same_store(store_snapshot(out), ref)


def test_old_store_deleted_once_the_first_new_slide_is_complete(arch, tmp_path):
    out = tmp_path / "c.zarr"
    convert_cohort(ConvertOptions(archive=arch, out=out))
    p = run_cli("convert", arch, "-o", out, "-q", "--overwrite", CLAM2SAM_TEST_KILL_AT="written:1")
    assert p.returncode == -signal.SIGKILL
    rep = convert_cohort(ConvertOptions(archive=arch, out=out))
    assert any("replaced store was deleted" in w for w in rep.warnings), rep.warnings
    assert [(o.slide_id, o.status) for o in rep.outcomes] == [("s0", "skipped"), ("s1", "converted")]
    assert not (out / ASIDE_NAME).exists() and open_store(out).slide_ids() == ["s0", "s1"]


def test_overwrite_that_converts_nothing_puts_the_old_store_back(arch, tmp_path):
    out = tmp_path / "c.zarr"
    convert_cohort(ConvertOptions(archive=arch, out=out))
    ref = store_snapshot(out)
    bad = tmp_path / "bad"
    af.write_features_h5(bad / "h5_files" / "s0.h5", np.zeros(40, np.float32), af.grid_coords(40))  # 1-D features
    rep = convert_cohort(ConvertOptions(archive=bad, out=out, overwrite=True))
    assert rep.by_status("failed") and any("kept as it was" in w for w in rep.warnings), rep.warnings
    assert not (out / ASIDE_NAME).exists()
    assert_same_store(store_snapshot(out), ref)


def test_report_never_overwrites_a_source_file(arch, tmp_path):
    before = _tree(arch)
    for target in (arch / "h5_files" / "s0.h5", arch / "segments" / "s1.pkl"):
        with pytest.raises(UsageError, match="--report would overwrite a file of the source ARCHIVE"):
            convert_cohort(ConvertOptions(archive=arch, out=tmp_path / "c.zarr", report_path=target))
    assert _tree(arch) == before and not (tmp_path / "c.zarr").exists()


def test_overwrite_with_worker_processes(arch, tmp_path):
    out = tmp_path / "c.zarr"
    convert_cohort(ConvertOptions(archive=arch, out=out, slides=("s1",)))
    rep = convert_cohort(ConvertOptions(archive=arch, out=out, overwrite=True, workers=2))
    assert rep.return_code == 0 and rep.counts()["converted"] == 2, rep.to_dict()
    assert open_store(out).slide_ids() == ["s0", "s1"] and not (out / ASIDE_NAME).exists()

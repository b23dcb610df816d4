import json

import numpy as np
import pytest

from clam2sam.cli.main import main
from clam2sam.store.writer import open_store

from tests.clam2sam import archive_factory as af
from tests.clam2sam.archive_factory import REFERENCE

needs_ref = pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference fixtures not present")


def _run(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


@needs_ref
def test_cli_reference_with_json_and_exit_codes(tmp_path, capsys):
    out = tmp_path / "ref.zarr"
    base = ["convert", str(REFERENCE / "clam"), "--segments-dir", str(REFERENCE / "sammil/segments"),
            "--membership", "reference", "--out", str(out)]
    # the ihc_tiled pickle is at vis_level 1 and its slide is not shipped: first failure stops, exit 1
    assert _run(base) == 1
    err = capsys.readouterr().err
    assert "ihc_tiled" in err and "--level-downsample" in err and "1 failed" in err
    assert _run(base + ["--level-downsample", "ihc_tiled=1:2", "--slides-dir", str(REFERENCE / "slides"),
                        "--json", "-q"]) == 0
    cap = capsys.readouterr()
    rep = json.loads(cap.out)  # machine-readable output on stdout only when asked
    assert rep["counts"] == {"converted": 1, "skipped": 2, "failed": 0}
    r = open_store(out)
    assert r.slide_ids() == ["cmu_small_region", "he_tiled", "ihc_tiled"]
    assert r.read_slide("ihc_tiled").patch_sam_area.tolist() == [845809] * 237


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    af.make_clam(tmp_path / "arch", {"a": 4})
    assert _run(["convert", str(tmp_path / "arch"), "--out", str(tmp_path / "c.zarr"), "--membership", "x"]) == 2
    assert _run(["convert", str(tmp_path / "arch"), "--out", str(tmp_path / "c.zarr"),
                 "--level-downsample", "bad"]) == 2
    assert "LEVEL:FACTOR" in capsys.readouterr().err
    assert _run(["convert", str(tmp_path / "nope"), "--out", str(tmp_path / "c.zarr")]) == 2


def test_cli_unknown_layout_exit_1_and_help(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _run(["convert", str(tmp_path / "empty"), "--out", str(tmp_path / "c.zarr")]) == 1
    assert "unknown layout" in capsys.readouterr().err
    assert _run(["convert", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Examples:" in out and "--membership reference" in out and "--skip-errors" in out


def test_cli_default_convert_with_summary(tmp_path, capsys):
    data = af.make_clam(tmp_path / "arch", {"001": 6, "002": 7})
    assert _run(["convert", str(tmp_path / "arch"), "--out", str(tmp_path / "c.zarr"), "--workers", "1"]) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and "2 converted" in cap.err and "no segments" in cap.err
    r = open_store(tmp_path / "c.zarr")
    assert r.slide_ids() == ["001", "002"]
    np.testing.assert_array_equal(r.read_slide("001").features, data["001"][0])
    assert (tmp_path / "c.zarr" / "convert_report.json").is_file()

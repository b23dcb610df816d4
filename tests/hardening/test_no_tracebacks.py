"""Inputs that could show users a Python traceback: each must give one clear message with the right exit code."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess

import numpy as np
import pytest
import zarr

from clam2sam.store.writer import SlideArrays, StoreWriter, open_store

from tests.clam2sam import archive_factory as af
from ._helpers import REPO, assert_same_store, clam2sam_cmd, cli_env, cohort, consolidated_ok, run_cli, store_snapshot


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb")
    cohort(root / "arch")
    ref = root / "ref.zarr"
    assert run_cli("convert", root / "arch", "--out", ref, "-q").returncode == 0
    return root, store_snapshot(ref)


def test_out_is_an_existing_file(base, tmp_path):
    root, _ = base
    f = tmp_path / "a_file.txt"
    f.write_text("my notes\n")
    p = run_cli("convert", root / "arch", "-o", f, "-q")
    assert p.returncode in (1, 2) and "Traceback" not in p.stderr, p.stderr
    assert str(f) in p.stderr.replace("\n", "") and "file" in p.stderr, p.stderr
    assert f.read_text() == "my notes\n"                      # untouched


def test_check_and_inspect_on_a_truncated_array_zarr_json(base, tmp_path):
    root, _ = base
    store = tmp_path / "t.zarr"
    shutil.copytree(root / "ref.zarr", store)
    (store / "slides" / "s1" / "features" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "arr')
    p = run_cli("inspect", store, "--check")
    out = p.stdout + p.stderr
    assert p.returncode == 1 and "Traceback" not in out, out
    assert "s1" in p.stdout and "features" in p.stdout and "JSONDecodeError" in p.stdout, p.stdout
    p = run_cli("inspect", store, "--slide", "s1")
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "slide 's1'" in p.stderr and "features" in p.stderr and "re-convert" in p.stderr, p.stderr


# ------------------------------------------------------------------------------------------ Ctrl-C

def test_finalize_ignores_half_written_slides(tmp_path):
    """The metadata of an interrupted slide is half written: finalize consolidates the complete ones."""
    path = tmp_path / "c.zarr"
    with StoreWriter(path) as w:
        for sid in ("a", "b"):
            w.write_slide(SlideArrays.from_partition(sid, np.ones((5, 4), np.float32), af.grid_coords(5), None))
        w.finalize()
        g = path / "slides" / "b"
        meta = json.loads((g / "zarr.json").read_text())
        meta["attributes"].pop("complete")
        (g / "zarr.json").write_text(json.dumps(meta))
        (g / "coords" / "zarr.json").write_text('{"shape": [5, ')   # cut mid-write
        w.finalize()
    z = zarr.open_consolidated(str(path), mode="r")
    assert list(z["slides"].group_keys()) == ["a"] and z.attrs["n_slides"] == 1
    np.testing.assert_array_equal(z["slides/a/features"][...], np.ones((5, 4), np.float32))
    assert open_store(path).slide_ids() == ["a"] and open_store(path).incomplete_slide_ids() == ["b"]


# consolidate:1 = Ctrl-C while the final metadata is written; array:16 = in the middle of slide s1
@pytest.mark.parametrize("point", ["consolidate:1:INT", "array:16:INT", "complete:2:INT"])
def test_ctrl_c_exits_130_and_a_plain_rerun_resumes(base, tmp_path, point):
    root, ref = base
    out = tmp_path / "c.zarr"
    p = subprocess.run(clam2sam_cmd("convert", root / "arch", "--out", out), cwd=str(REPO), capture_output=True,
                       text=True, timeout=180, env=cli_env(CLAM2SAM_TEST_KILL_AT=point))
    assert p.returncode == 130, (point, p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr and ("Aborted" in p.stderr or "Interrupted" in p.stderr), p.stderr
    assert p.returncode != -signal.SIGINT
    assert consolidated_ok(out), point                                             # store stays consistent
    p = run_cli("convert", root / "arch", "--out", out, "-q")                     # the same command, no flag
    assert p.returncode == 0, p.stderr
    assert_same_store(store_snapshot(out), ref)

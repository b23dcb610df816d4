"""`clam2sam convert` killed with SIGKILL at every kind of write point (clam2sam._testhooks) resumes, with the same
command and no flag, to a store whose slide files are byte-identical to an uninterrupted run's."""
from __future__ import annotations

import signal
import subprocess

import pytest

from clam2sam.convert.cohort import ConvertOptions, convert_cohort
from clam2sam.store.writer import open_store
from clam2sam.store.lock import LOCK_NAME, read_lock

from tests.clam2sam import archive_factory as af
from ._helpers import (REPO, assert_same_store, clam2sam_cmd, cli_env, cohort, consolidated_ok, store_file_digests,
                       store_snapshot)

# 11 arrays per slide, 3 slides, one inner chunk per array. array:5 = slide s0 between arrays, array:14 = s1
# after its 3rd array; json:1 = s0's group metadata written, not renamed; json:13 = s0's completion mark written,
# not renamed; chunk:3 / chunk:20 = a shard cut short (s0's 3rd array, s1's 9th); written:3 = every slide
# complete, root attrs (feature_dim, dtype) not yet recorded; consolidate:1 = before the final metadata.
KILL_POINTS = ["init:1", "json:1", "features:2", "chunk:3", "array:5", "json:13", "array:14", "chunk:20",
               "complete:3", "written:3", "consolidate:1"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    cohort(root / "arch")
    ref = root / "ref.zarr"
    rep = convert_cohort(ConvertOptions(archive=root / "arch", out=ref))
    assert rep.counts()["converted"] == 3
    return root, store_snapshot(ref)


@pytest.fixture(scope="module")
def ref_files(archive):
    root, _ = archive
    return store_file_digests(root / "ref.zarr")


def test_sigkill_at_each_point_then_resume_equals_uninterrupted(archive, ref_files):
    root, ref = archive
    assert len({p.split(":")[0] for p in KILL_POINTS}) >= 6
    arch = root / "arch"
    before = af.file_hashes(arch)
    procs = {}
    for point in KILL_POINTS:  # killed runs in parallel, one store each
        out = root / f"k_{point.replace(':', '_')}.zarr"
        procs[point] = (out, subprocess.Popen(clam2sam_cmd("convert", arch, "--out", out, "--quiet"), cwd=str(REPO),
                                              env=cli_env(CLAM2SAM_TEST_KILL_AT=point),
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for point, (out, p) in procs.items():
        _, err = p.communicate(timeout=180)
        assert p.returncode == -signal.SIGKILL, (point, p.returncode, err)
        # the dead process left its lock record, but the kernel freed its OS lock: a plain re-run resumes
        info = read_lock(out)
        assert info is not None and info["pid"] == p.pid, point
        # what survived the kill is a valid store or nothing a reader trusts
        if (out / "zarr.json").exists() and point != "init:1":
            r = open_store(out)
            for sid in r.slide_ids():  # complete slides read back whole
                assert r.read_slide(sid).n_patches == 40
        rep = convert_cohort(ConvertOptions(archive=arch, out=out))
        assert rep.return_code == 0 and rep.counts()["failed"] == 0, (point, rep.to_dict())
        assert not (out / LOCK_NAME).exists()
        assert_same_store(store_snapshot(out), ref)
        assert store_file_digests(out) == ref_files, point       # byte-identical slide files, nothing left over
        assert consolidated_ok(out), point
    assert af.file_hashes(arch) == before  # sources byte-identical (size + sha256 of every file)


def test_kill_between_arrays_rerun_through_cli(archive):
    """The same through the CLI on both sides: the plain re-run resumes (no flag needed)."""
    root, ref = archive
    arch, out = root / "arch", root / "cli.zarr"
    p = subprocess.run(clam2sam_cmd("convert", arch, "--out", out, "-q"), cwd=str(REPO), capture_output=True,
                       text=True, timeout=180, env=cli_env(CLAM2SAM_TEST_KILL_AT="array:16"))
    assert p.returncode == -signal.SIGKILL
    assert open_store(out).slide_ids() == ["s0"] and open_store(out).incomplete_slide_ids() == ["s1"]
    env = cli_env()
    p = subprocess.run(clam2sam_cmd("convert", arch, "--out", out, "-q"), cwd=str(REPO), capture_output=True,
                       text=True, timeout=180, env=env)
    assert p.returncode == 0, p.stderr
    rep = open_store(out)
    assert rep.slide_ids() == ["s0", "s1", "s2"]
    assert_same_store(store_snapshot(out), ref)

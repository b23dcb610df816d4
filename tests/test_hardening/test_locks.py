"""Two conversions into one store: the second refuses naming the holder; dead holders' locks are detected and
cleared only on request (--break-stale-lock); a live or foreign holder's lock is never broken."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from clam2sam.convert import ConvertOptions, convert_cohort
from clam2sam.errors import StoreLockedError
from clam2sam.store import StoreWriter, open_store
from clam2sam.store_lock import LOCK_NAME, acquire_lock, read_lock

from ._helpers import cohort, run_cli


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    root = tmp_path_factory.mktemp("locks") / "arch"
    cohort(root, n_slides=2)
    return root


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_conversion_refused_naming_the_holder(arch, tmp_path):
    out = tmp_path / "c.zarr"
    holder = StoreWriter(out)  # a live conversion in this process
    try:
        p = run_cli("convert", arch, "--out", out, "-q")
        assert p.returncode == 1
        host = socket.gethostname()
        assert f"pid {os.getpid()} on {host}" in p.stderr and "being written by another process" in p.stderr
        assert "wait for it to finish" in p.stderr and LOCK_NAME in p.stderr
        # --break-stale-lock does not break a live holder's lock, --overwrite does not delete under it
        p = run_cli("convert", arch, "--out", out, "-q", "--break-stale-lock")
        assert p.returncode == 1 and "being written by another process" in p.stderr
        p = run_cli("convert", arch, "--out", out, "-q", "--overwrite")
        assert p.returncode == 1 and f"pid {os.getpid()}" in p.stderr
        assert read_lock(out)["pid"] == os.getpid() and open_store(out).slide_ids() == []
    finally:
        holder.close()
    assert not (out / LOCK_NAME).exists()
    assert convert_cohort(ConvertOptions(archive=arch, out=out)).return_code == 0


def test_stale_lock_detected_and_broken_on_request(arch, tmp_path):
    out = tmp_path / "c.zarr"
    convert_cohort(ConvertOptions(archive=arch, out=out, slides=("s0",)))
    pid = _dead_pid()
    (out / LOCK_NAME).write_text(json.dumps({"pid": pid, "hostname": socket.gethostname(), "created": "then"}))
    with pytest.raises(StoreLockedError) as e:
        convert_cohort(ConvertOptions(archive=arch, out=out))
    assert f"pid {pid}" in str(e.value) and "no longer runs" in str(e.value) and "--break-stale-lock" in str(e.value)
    assert open_store(out).slide_ids() == ["s0"]  # refusing touched nothing
    rep = convert_cohort(ConvertOptions(archive=arch, out=out, break_stale_lock=True))
    assert [(o.slide_id, o.status) for o in rep.outcomes] == [("s0", "skipped"), ("s1", "converted")]
    assert not (out / LOCK_NAME).exists()


def test_lock_of_another_host_is_never_broken(arch, tmp_path):
    out = tmp_path / "c.zarr"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 1234, "hostname": "node-17.cluster", "created": "x"}))
    for flag in ((), ("--break-stale-lock",)):
        p = run_cli("convert", arch, "--out", out, "-q", *flag)
        assert p.returncode == 1 and "pid 1234 on node-17.cluster" in p.stderr, p.stderr
    assert read_lock(out)["hostname"] == "node-17.cluster"


@pytest.mark.parametrize("content", ["", "{not json", "[]"])
def test_unreadable_lock_is_named_and_breakable(arch, tmp_path, content):
    """A writer killed between creating the lock file and writing it leaves an empty lock."""
    out = tmp_path / "c.zarr"
    out.mkdir()
    (out / LOCK_NAME).write_text(content)
    with pytest.raises(StoreLockedError) as e:
        acquire_lock(out)
    assert "unreadable" in str(e.value) and "holder is unknown" in str(e.value) and "--break-stale-lock" in str(e.value) and LOCK_NAME in str(e.value)
    rep = convert_cohort(ConvertOptions(archive=arch, out=out, break_stale_lock=True))
    assert rep.return_code == 0 and open_store(out).slide_ids() == ["s0", "s1"]


def test_lock_file_is_never_observed_empty(tmp_path):
    """The lock appears with its content in one step (written aside, then linked into place)."""
    lock = acquire_lock(tmp_path / "s.zarr")
    info = json.loads(lock.read_text())
    assert info["pid"] == os.getpid() and info["hostname"] == socket.gethostname()
    assert [p.name for p in (tmp_path / "s.zarr").iterdir()] == [LOCK_NAME]  # no temp file left behind

"""The store's write lock is an OS lock (flock through filelock) that the kernel frees when its holder dies:

* a live concurrent conversion is refused, naming the holder; no flag breaks a live holder's lock;
* after SIGKILL / SIGTERM of the holder a plain re-run resumes, no flag needed;
* a record left by another host, or any record on a file system without flock, cannot be verified and is only
  taken over with --break-stale-lock (a dead holder on this host is recognised and taken over automatically).
"""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from clam2sam.convert.cohort import ConvertOptions, convert_cohort
from clam2sam.errors import StoreLockedError
from clam2sam.store.writer import StoreWriter, open_store
from clam2sam.store.lock import LOCK_NAME, acquire_lock, read_lock

from ._helpers import REPO, cli_env, cohort, run_cli

HOLD = """
import sys, time
from clam2sam.store.writer import StoreWriter
w = StoreWriter(sys.argv[1])
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    root = tmp_path_factory.mktemp("locks") / "arch"
    cohort(root, n_slides=2)
    return root


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _holder(out) -> subprocess.Popen:
    """Another process holding the store's lock (a conversion in progress)."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=str(REPO), env=cli_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held", p.stderr.read()
    return p


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


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_rerun_after_holder_killed_resumes_without_flag(arch, tmp_path, sig):
    out = tmp_path / "c.zarr"
    convert_cohort(ConvertOptions(archive=arch, out=out, slides=("s0",)))
    p = _holder(out)
    try:
        with pytest.raises(StoreLockedError) as e:  # while it lives: refused, naming it
            convert_cohort(ConvertOptions(archive=arch, out=out, break_stale_lock=True))
        assert f"pid {p.pid}" in str(e.value) and "being written by another process" in str(e.value)
    finally:
        p.send_signal(sig)
        p.wait(timeout=30)
    assert p.returncode == -sig
    assert read_lock(out)["pid"] == p.pid  # its record is still there: only the OS lock went with it
    rep = convert_cohort(ConvertOptions(archive=arch, out=out))
    assert [(o.slide_id, o.status) for o in rep.outcomes] == [("s0", "skipped"), ("s1", "converted")]
    assert rep.return_code == 0 and not (out / LOCK_NAME).exists()


def test_sigkill_mid_conversion_cli_rerun_resumes(arch, tmp_path):
    out = tmp_path / "c.zarr"
    p = run_cli("convert", arch, "--out", out, "-q", CLAM2SAM_TEST_KILL_AT="array:16")
    assert p.returncode == -signal.SIGKILL
    assert open_store(out).slide_ids() == ["s0"] and open_store(out).incomplete_slide_ids() == ["s1"]
    p = run_cli("convert", arch, "--out", out, "-q")
    assert p.returncode == 0, p.stderr
    assert open_store(out).slide_ids() == ["s0", "s1"] and not (out / LOCK_NAME).exists()


def test_record_of_another_host_needs_the_flag(arch, tmp_path):
    """Locks of some file systems (NFS with nolock) do not reach across hosts: such a record is not trusted away."""
    out = tmp_path / "c.zarr"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 1234, "hostname": "node-17.cluster", "created": "x"}))
    p = run_cli("convert", arch, "--out", out, "-q")
    assert p.returncode == 1 and "pid 1234 on node-17.cluster" in p.stderr and "another host" in p.stderr, p.stderr
    assert "--break-stale-lock" in p.stderr and read_lock(out)["hostname"] == "node-17.cluster"
    p = run_cli("convert", arch, "--out", out, "-q", "--break-stale-lock")
    assert p.returncode == 0, p.stderr
    assert open_store(out).slide_ids() == ["s0", "s1"] and not (out / LOCK_NAME).exists()


@pytest.mark.parametrize("content", [b"", b"{not json", b"[]", b"\xff\xfe\x00garbage"])
def test_unreadable_record_of_a_dead_run_is_taken_over(arch, tmp_path, content):
    """A writer killed between creating the lock file and writing it leaves an empty record; the OS lock is free."""
    out = tmp_path / "c.zarr"
    out.mkdir()
    (out / LOCK_NAME).write_bytes(content)
    rep = convert_cohort(ConvertOptions(archive=arch, out=out))
    assert rep.return_code == 0 and open_store(out).slide_ids() == ["s0", "s1"]


def test_lock_file_holds_the_record_while_held(tmp_path):
    lock = acquire_lock(tmp_path / "s.zarr")
    info = json.loads(lock.path.read_text())
    assert info["pid"] == os.getpid() and info["hostname"] == socket.gethostname()
    assert [p.name for p in (tmp_path / "s.zarr").iterdir()] == [LOCK_NAME]  # no temp file left behind
    with pytest.raises(StoreLockedError, match="being written by another process"):
        acquire_lock(tmp_path / "s.zarr")
    lock.release()
    assert not (tmp_path / "s.zarr" / LOCK_NAME).exists()
    acquire_lock(tmp_path / "s.zarr").release()


@pytest.fixture
def no_flock(monkeypatch):
    """A file system without flock (flock fails with ENOLCK, as on NFS without a lock manager)."""
    def unsupported(fd, blocking=True):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr("clam2sam.store.lock.lock_descriptor", unsupported)


def test_no_flock_falls_back_to_the_record(arch, tmp_path, no_flock):
    out = tmp_path / "c.zarr"
    out.mkdir()
    lock = out / LOCK_NAME
    # dead holder on this host: known dead, taken over without a flag
    lock.write_text(json.dumps({"pid": _dead_pid(), "hostname": socket.gethostname(), "created": "x"}))
    assert convert_cohort(ConvertOptions(archive=arch, out=out, slides=("s0",))).return_code == 0
    assert not lock.exists()
    # live holder on this host: refused even with the flag
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": live.pid, "hostname": socket.gethostname(), "created": "x"}))
        for flag in (False, True):
            with pytest.raises(StoreLockedError, match=f"pid {live.pid}.*being written|being written.*pid {live.pid}"):
                convert_cohort(ConvertOptions(archive=arch, out=out, break_stale_lock=flag))
    finally:
        live.kill()
        live.wait()
    # another host, or an unreadable record: cannot be verified here -> only with the flag
    for content, expect in ((json.dumps({"pid": 7, "hostname": "node-3", "created": "x"}), "another host"),
                            ("", "unreadable")):
        lock.write_text(content)
        with pytest.raises(StoreLockedError) as e:
            convert_cohort(ConvertOptions(archive=arch, out=out))
        assert expect in str(e.value) and "no working flock" in str(e.value) and "--break-stale-lock" in str(e.value)
    rep = convert_cohort(ConvertOptions(archive=arch, out=out, break_stale_lock=True))
    assert [(o.slide_id, o.status) for o in rep.outcomes] == [("s0", "skipped"), ("s1", "converted")]
    assert not lock.exists()


def test_lock_freed_by_the_kernel_not_by_cleanup(tmp_path):
    """The holder is SIGKILLed (no cleanup ran): the lock is free at once, with no waiting or polling."""
    out = tmp_path / "c.zarr"
    p = _holder(out)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    t0 = time.monotonic()
    acquire_lock(out).release()
    assert time.monotonic() - t0 < 5

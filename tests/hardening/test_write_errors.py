"""Disk full / permission denied while writing the store: stop cleanly (slide + path named, exit 1), the store
stays valid (complete slides readable, the failed slide incomplete or absent), a re-run resumes.

Simulated by patching zarr's LocalStore writes and clam2sam.store.fast_write's file creation (tests run as root, where chmod does not block writes)."""
from __future__ import annotations

import errno

import pytest
from zarr.storage import LocalStore

from clam2sam.cli import main as cli

from clam2sam.store import fast_write
from clam2sam.convert.cohort import ConvertOptions, convert_cohort
from clam2sam.errors import StoreError
from clam2sam.store.writer import open_store

from ._helpers import assert_same_store, cohort, store_snapshot

ENOSPC = (errno.ENOSPC, "No space left on device")
EACCES = (errno.EACCES, "Permission denied")


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    root = tmp_path_factory.mktemp("werr")
    cohort(root / "arch")
    ref = root / "ref.zarr"
    convert_cohort(ConvertOptions(archive=root / "arch", out=ref))
    return root / "arch", store_snapshot(ref)


def fail_writes(monkeypatch, err: tuple, when):
    """Make LocalStore.set and the shard writer raise OSError(err) for keys where ``when(full_path)``; returns the hit list."""
    orig = LocalStore.set
    hits = []

    async def set_(self, key, value, *a, **kw):
        full = f"{self.root}/{key}"
        if when(full):
            hits.append(full)
            raise OSError(err[0], err[1], full)
        return await orig(self, key, value, *a, **kw)

    monkeypatch.setattr(LocalStore, "set", set_)
    real_create = fast_write._create

    def create(path):                    # the direct shard writer's files (clam2sam.store.fast_write)
        if when(str(path)):
            hits.append(str(path))
            raise OSError(err[0], err[1], str(path))
        return real_create(path)

    monkeypatch.setattr(fast_write, "_create", create)
    return hits


def _main(capsys, *argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        cli.main([str(a) for a in argv])
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("err", [ENOSPC, EACCES], ids=["disk-full", "permission"])
def test_slide_write_error_named_then_resume(arch, tmp_path, monkeypatch, err):
    src, ref = arch
    out = tmp_path / "c.zarr"
    hits = fail_writes(monkeypatch, err, lambda p: "/slides/s1/" in p)
    rep = convert_cohort(ConvertOptions(archive=src, out=out))
    assert hits and rep.return_code == 1
    assert [(o.slide_id, o.status) for o in rep.outcomes] == [("s0", "converted"), ("s1", "failed")]
    reason = rep.outcomes[1].reason
    assert "slide 's1'" in reason and err[1] in reason and str(out / "slides" / "s1") in reason, reason
    assert " -- " in reason and "re-run" in reason  # says what to do
    r = open_store(out)
    assert r.slide_ids() == ["s0"] and "s1" not in r.slide_ids()
    assert r.read_slide("s0").n_patches == 40
    monkeypatch.undo()  # space freed / permission fixed: the re-run resumes
    rep = convert_cohort(ConvertOptions(archive=src, out=out))
    assert [(o.slide_id, o.status) for o in rep.outcomes] == [("s0", "skipped"), ("s1", "converted"),
                                                               ("s2", "converted")]
    assert_same_store(store_snapshot(out), ref)


def test_skip_errors_goes_on_after_a_write_error(arch, tmp_path, monkeypatch):
    src, _ = arch
    out = tmp_path / "c.zarr"
    fail_writes(monkeypatch, ENOSPC, lambda p: "/slides/s1/" in p)
    rep = convert_cohort(ConvertOptions(archive=src, out=out, skip_errors=True))
    assert {o.slide_id: o.status for o in rep.outcomes} == {"s0": "converted", "s1": "failed", "s2": "converted"}
    assert open_store(out).slide_ids() == ["s0", "s2"]


def test_disk_full_for_good_exits_1_without_traceback(arch, tmp_path, monkeypatch, capsys):
    """Every write fails from slide s1 on (metadata, report too): one clean message, exit 1, store valid."""
    src, _ = arch
    out = tmp_path / "c.zarr"
    full = {"on": False}

    def when(p):
        full["on"] = full["on"] or "/slides/s1/" in p
        return full["on"]

    fail_writes(monkeypatch, ENOSPC, when)
    real_write = __import__("clam2sam.convert.report", fromlist=["Report"]).Report.write_json

    def write_json(self, path):
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(self, path)

    monkeypatch.setattr("clam2sam.convert.report.Report.write_json", write_json)
    code, err = _main(capsys, "convert", src, "--out", out, "-q")
    assert code == 1, err
    assert "Traceback" not in err and "slide 's1'" in err and "No space left on device" in err, err
    r = open_store(out)
    assert r.slide_ids() == ["s0"] and r.read_slide("s0").n_patches == 40


def test_store_not_creatable_named(arch, tmp_path, monkeypatch, capsys):
    src, _ = arch
    out = tmp_path / "ro" / "c.zarr"

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(out))

    monkeypatch.setattr("clam2sam.store.writer.acquire_lock", denied)
    with pytest.raises(StoreError) as e:
        convert_cohort(ConvertOptions(archive=src, out=out))
    assert "Permission denied" in str(e.value) and str(out) in str(e.value) and " -- " in str(e.value)
    code, err = _main(capsys, "convert", src, "--out", out, "-q")
    assert code == 1 and "Traceback" not in err and "Permission denied" in err

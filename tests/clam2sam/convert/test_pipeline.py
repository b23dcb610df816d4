"""Convert's slide pipeline (next slide prepared while this one is written): same stores, reports and errors
as converting each slide in turn."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

import clam2sam.convert.executors as conv
import clam2sam.convert.slide_job as cs
from clam2sam.convert.cohort import ConvertOptions, convert_cohort
from clam2sam.store.writer import open_store
from tests.clam2sam.archive_factory import make_segmented_cohort, write_features_h5, write_pt


def _sequential(monkeypatch):
    """The converter as it ran before the pipeline: every slide through run_job_safe, in turn."""
    class InTurn:
        def __init__(self, provider=None):
            self.provider = provider

        def run(self, job, next_job=None):
            return cs.run_job_safe(job, self.provider)

        def close(self):
            pass

    monkeypatch.setattr(conv, "SlidePipeline", InTurn)


def _store_bytes(store):
    out = {}
    for p in sorted(store.rglob("*")):
        if p.is_file() and p.name != "convert_report.json":
            b = p.read_bytes()
            if p.relative_to(store).as_posix() == "zarr.json":
                d = json.loads(b)
                d["attributes"].pop("created")
                b = json.dumps(d).encode()
            out[p.relative_to(store).as_posix()] = b
    return out


def _report(store):
    rep = json.loads((store / "convert_report.json").read_text())
    for s in rep["slides"]:
        s.pop("seconds")
    return rep


def _cohort(tmp_path):
    root = tmp_path / "arch"
    make_segmented_cohort(root, n_slides=5, n=40)
    # slide s2: its .pt is stale (a middle row differs) -> fails in the middle of the run
    f = np.random.default_rng(9).normal(size=(40, 8)).astype(np.float32)
    write_pt(root / "pt_files" / "s2.pt", f)
    return root


@pytest.mark.parametrize("skip_errors", [True, False])
def test_pipeline_equals_one_slide_at_a_time(tmp_path, monkeypatch, skip_errors):
    root = _cohort(tmp_path)
    opts = dict(archive=root, segments_dir=root / "segments", skip_errors=skip_errors)
    a = convert_cohort(ConvertOptions(out=tmp_path / "piped.zarr", **opts))
    with monkeypatch.context() as m:
        _sequential(m)
        b = convert_cohort(ConvertOptions(out=tmp_path / "turn.zarr", **opts))
    assert a.return_code == b.return_code == 1
    assert _report(tmp_path / "piped.zarr") == _report(tmp_path / "turn.zarr")
    assert _store_bytes(tmp_path / "piped.zarr") == _store_bytes(tmp_path / "turn.zarr")
    done = open_store(tmp_path / "piped.zarr").slide_ids()
    assert done == (["s0", "s1", "s3", "s4"] if skip_errors else ["s0", "s1"])   # stops at s2 without the flag


def test_next_slide_is_prepared_during_the_write(tmp_path, monkeypatch):
    """From the second slide on (store dims known), slide i+1 is prepared on the pipeline's thread while
    slide i is written on the caller's."""
    root = tmp_path / "arch"
    make_segmented_cohort(root, n_slides=4, n=40)
    seen = []
    prepare, write = cs.prepare_job, cs.write_prepared

    def spy_prepare(job, provider=None):
        seen.append(("prepare", job.files.slide_id, threading.current_thread().name))
        return prepare(job, provider)

    def spy_write(job, p):
        seen.append(("write", job.files.slide_id, threading.current_thread().name))
        return write(job, p)

    monkeypatch.setattr(cs, "prepare_job", spy_prepare)
    monkeypatch.setattr(cs, "write_prepared", spy_write)
    rep = convert_cohort(ConvertOptions(archive=root, out=tmp_path / "s.zarr", segments_dir=root / "segments"))
    assert rep.return_code == 0
    ahead = {sid for kind, sid, th in seen if kind == "prepare" and th.startswith("clam2sam-prepare")}
    assert ahead == {"s2", "s3"}      # s0: no store dims yet; s1 waits for s0's dims; then one ahead each
    assert [sid for kind, sid, _ in seen if kind == "write"] == ["s0", "s1", "s2", "s3"]
    assert all(th == threading.main_thread().name for kind, _, th in seen if kind == "write")


def test_dim_mismatch_reported_as_in_turn(tmp_path, monkeypatch):
    """A later slide of another feature dim fails with the message of the in-turn check, pipelined or not."""
    root = tmp_path / "arch"
    make_segmented_cohort(root, n_slides=4, n=40)
    f = np.random.default_rng(1).normal(size=(40, 6)).astype(np.float32)      # D = 6, the others 8
    c = np.stack([np.arange(40) // 8 * 64, np.arange(40) % 8 * 64], 1)
    write_features_h5(root / "h5_files" / "s3.h5", f, c.astype(np.int32))
    write_pt(root / "pt_files" / "s3.pt", f)
    opts = dict(archive=root, segments_dir=root / "segments", skip_errors=True)
    convert_cohort(ConvertOptions(out=tmp_path / "piped.zarr", **opts))
    with monkeypatch.context() as m:
        _sequential(m)
        convert_cohort(ConvertOptions(out=tmp_path / "turn.zarr", **opts))
    a, b = _report(tmp_path / "piped.zarr"), _report(tmp_path / "turn.zarr")
    assert a == b
    bad = [s for s in a["slides"] if s["status"] == "failed"]
    assert [s["slide_id"] for s in bad] == ["s3"] and "feature dim 6 differs from the store's 8" in bad[0]["reason"]

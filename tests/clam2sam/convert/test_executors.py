"""The executor interface and the booking shared by every executor: outcomes, stop, progress."""
from __future__ import annotations

import pytest

from clam2sam.convert.booking import Booking
from clam2sam.convert.executors import PoolExecutor, SerialExecutor, make_executor
from clam2sam.convert.options import ConvertOptions
from clam2sam.convert.report import Report
from clam2sam.convert.slide_job import SlideResult
from clam2sam.errors import InputFormatError
from clam2sam.store.writer import StoreWriter


def _result(sid, dim=8):
    return SlideResult(slide_id=sid, n_patches=10, n_segments=2, feature_dim=dim, feature_dtype="float32",
                       encoder="enc", seconds=0.5, path=f"/a/{sid}.h5", warnings=[f"note {sid}"])


@pytest.fixture
def booked(tmp_path):
    def make(skip_errors=False):
        o = ConvertOptions(archive=tmp_path, out=tmp_path / "c.zarr", skip_errors=skip_errors)
        writer = StoreWriter(o.out)
        seen = []
        b = Booking(o, writer, Report(), lambda sid, done, total: seen.append((sid, done, total)), total=4)
        return b, writer, seen
    yield make


def test_booking_records_and_stops_at_the_first_failure(booked):
    b, writer, seen = booked()
    assert b.expected() == (None, None)
    b.book("s0", "ok", _result("s0"))
    assert b.expected() == (8, "float32") and not b.stopped
    b.book("s1", "error", InputFormatError("bad h5", slide="s1"))
    assert b.stopped
    b.book("s2", "error", InputFormatError("also bad", slide="s2"))   # in flight when the run stopped: not booked
    b.book("s3", "ok", _result("s3"))                                  # in flight and done: kept
    rep = b.report
    assert [(o.slide_id, o.status) for o in rep.outcomes] == [("s0", "converted"), ("s1", "failed"),
                                                               ("s3", "converted")]
    assert "bad h5" in rep.outcomes[1].reason and rep.warnings[0] == "note s0"
    assert any("stopped at the first failure (slide 's1')" in w for w in rep.warnings)
    assert seen == [(None, 0, 4), ("s0", 1, 4), ("s1", 2, 4), ("s2", 3, 4), ("s3", 4, 4)]
    writer.close()


def test_booking_turns_another_feature_dim_into_a_failure(booked):
    b, writer, _ = booked(skip_errors=True)
    b.book("s0", "ok", _result("s0", dim=8))
    b.book("s1", "ok", _result("s1", dim=16))
    assert [o.status for o in b.report.outcomes] == ["converted", "failed"] and not b.stopped
    assert "feature dim 16 differs from the store's 8" in b.report.outcomes[1].reason
    writer.close()


def test_serial_executor_yields_known_failures_in_order_and_stops():
    dup = [InputFormatError(f"duplicate {i}", slide=f"d{i}") for i in range(3)]
    ex = SerialExecutor(None, lambda: (None, None))
    pending = [("d0", dup[0]), ("d1", dup[1]), ("d2", dup[2])]
    got = []
    outcomes = ex.run(pending)
    for sid, status, res in outcomes:
        got.append((sid, status, res))
        if sid == "d1":
            ex.stop()
    assert got == [("d0", "error", dup[0]), ("d1", "error", dup[1])]


def test_pool_executor_yields_known_failures_first_and_stops_before_starting():
    dup = InputFormatError("duplicate", slide="d0")
    ex = PoolExecutor(None, workers=2)
    outcomes = ex.run([("d0", dup), ("s1", object())])
    assert next(outcomes) == ("d0", "error", dup)
    ex.stop()
    assert list(outcomes) == []          # stopped: no process pool is started


def test_make_executor_picks_by_options(tmp_path):
    def pick(**kw):
        return type(make_executor(ConvertOptions(archive=tmp_path, out=tmp_path / "o", **kw), None, 5,
                                  lambda: (None, None), print)).__name__

    assert pick() == "SerialExecutor" and pick(workers=3) == "PoolExecutor"
    assert type(make_executor(ConvertOptions(archive=tmp_path, out=tmp_path / "o", workers=3), None, 1,
                              lambda: (None, None), print)).__name__ == "SerialExecutor"   # one slide: no pool
    warned = []
    unpicklable = lambda *a: None  # noqa: E731 - a lambda cannot be sent to a spawned process
    ex = make_executor(ConvertOptions(archive=tmp_path, out=tmp_path / "o", workers=3), unpicklable, 5,
                       lambda: (None, None), warned.append)
    assert type(ex).__name__ == "SerialExecutor" and "cannot be sent to worker processes" in warned[0]
    assert pick(dask_local=2) == "DaskExecutor"

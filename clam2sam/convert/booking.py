"""Booking of per-slide outcomes, written once for every executor.

An executor yields ``(slide_id, status, result)`` (status ``"ok"`` with a
:class:`~clam2sam.convert.slide_job.SlideResult`, or ``"error"`` with the exception); :class:`Booking`
checks the feature dim / dtype against the store, records the outcome in the writer and the report, drives
the progress callback and decides when the run stops (the first failure, unless ``skip_errors``).
"""
from __future__ import annotations

import shutil
from typing import Callable

from clam2sam.convert.report import Report
from clam2sam.errors import StoreError
from clam2sam.ids import slide_key
from clam2sam.store import schema
from clam2sam.store.writer import StoreWriter

Progress = Callable[["str | None", int, int], None]


class Booking:
    """Books the outcomes of one run: ``book`` each outcome as it arrives; ``stopped`` once the run must
    submit nothing more (slides already in flight that finish are still booked when they succeed)."""

    def __init__(self, options, writer: StoreWriter, report: Report, progress: Progress | None, total: int):
        self.options, self.writer, self.report, self.progress = options, writer, report, progress
        self.total, self.done, self.stopped = total, 0, False
        if progress:
            progress(None, 0, total)

    def expected(self) -> tuple[int | None, str | None]:
        """The store's feature dim and dtype so far (None before the first slide)."""
        attrs = self.writer.root.attrs
        return attrs.get("feature_dim"), attrs.get("feature_dtype")

    def book(self, sid: str, status: str, res) -> None:
        """Record one slide's outcome; after a stop only successes are recorded (their slides are kept)."""
        self.done += 1
        if not self.stopped:
            self.stopped = not self._record(sid, status, res)
        elif status == "ok":
            self._record(sid, status, res)
        if self.progress:
            self.progress(sid, self.done, self.total)

    def _record(self, sid: str, status: str, res) -> bool:
        """Book one slide's outcome; returns False when the run must stop."""
        o, writer, report = self.options, self.writer, self.report
        if status == "ok":
            try:
                writer.check_compatible(sid, res.feature_dim, res.feature_dtype)
            except StoreError as e:
                shutil.rmtree(o.out / schema.SLIDES_GROUP / slide_key(sid), ignore_errors=True)
                status, res = "error", e
            else:
                try:
                    writer.record_features(res.feature_dim, res.feature_dtype)
                    writer.set_encoder(res.encoder)
                except StoreError as e:  # the slide is complete; the root attrs are recovered by finalize
                    report.error(str(e))
                for w in res.warnings:
                    report.warn(w)
                try:
                    writer.commit_overwrite()   # the first new slide is there: the replaced store goes
                except StoreError as e:
                    report.error(str(e))
                report.converted(sid, path=res.path, seconds=round(res.seconds, 3), n_patches=res.n_patches,
                                 n_segments=res.n_segments)
                return True
        report.failed(sid, res if isinstance(res, BaseException) else str(res), path=getattr(res, "path", None))
        if not o.skip_errors:
            report.warn(f"stopped at the first failure (slide {sid!r}); completed slides are kept -- fix it, or "
                        "pass --skip-errors to record failures and go on")
            return False
        return True

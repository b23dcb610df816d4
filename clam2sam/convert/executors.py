"""Executors: run the per-slide jobs of a conversion and yield their outcomes, one interface for all.

Each executor has ``run(pending) -> Iterator[(slide_id, status, result)]`` and ``stop()``:

- ``pending`` is ``[(slide_id, SlideJob | exception)]`` in slide order; an exception is a failure known
  before any work (a duplicate id) and comes back as an ``"error"`` outcome.
- each outcome is ``(slide_id, "ok", SlideResult)`` or ``(slide_id, "error", exception)``; the caller
  books it (:class:`clam2sam.convert.booking.Booking`) and calls ``stop()`` after the first failure
  without ``--skip-errors``: nothing new starts, and slides already running still come back.

:class:`SerialExecutor` converts in this process (the next slide prepared while this one is written),
:class:`PoolExecutor` in ``--workers N`` processes, and
:class:`clam2sam.convert.dask_executor.DaskExecutor` on a Dask cluster.
"""
from __future__ import annotations

import os
import pickle
from typing import Iterator

from clam2sam.convert.read_ahead import PREFETCH_AHEAD, read_ahead, slides_ahead
from clam2sam.convert.slide_job import Expected, SegmentProvider, SlideJob, SlidePipeline, run_job_safe, with_expected
from clam2sam.store.fast_write import encode_threads

Outcome = tuple  # (slide_id, "ok" | "error", SlideResult | exception)


class SerialExecutor:
    """One slide after the other in this process; the next slide is prepared on a thread while this one is
    written (:class:`~clam2sam.convert.slide_job.SlidePipeline`) and later slides' files are read ahead."""

    def __init__(self, provider: SegmentProvider | None, expected: Expected):
        self.provider, self.expected, self._stopped = provider, expected, False

    def stop(self) -> None:
        self._stopped = True

    def run(self, pending) -> Iterator[Outcome]:
        jobs = [j for _, j in pending if isinstance(j, SlideJob)]
        pos = {id(j): i for i, j in enumerate(jobs)}   # the first PREFETCH_AHEAD: see convert_cohort
        pipe = SlidePipeline(self.provider)             # the next slide is prepared while this one is written
        try:
            for sid, job in pending:
                if isinstance(job, SlideJob):
                    i = pos[id(job)]
                    if i + PREFETCH_AHEAD < len(jobs):  # later slides' files come off the disk meanwhile
                        read_ahead(jobs[i + PREFETCH_AHEAD].files)
                    nxt = jobs[i + 1] if i + 1 < len(jobs) else None
                    status, res = pipe.run(with_expected(job, self.expected),
                                           None if nxt is None else with_expected(nxt, self.expected))
                else:
                    status, res = "error", job
                yield sid, status, res
                if self._stopped:
                    return
        finally:
            pipe.close()


def _worker_init(threads: int) -> None:
    """Worker process start: its share of the encode threads (:func:`clam2sam.store.fast_write.encode_threads`)."""
    os.environ["CLAM2SAM_THREADS"] = str(threads)


class PoolExecutor:
    """``workers`` spawned processes, one slide each at a time (each writes only its own slide group)."""

    def __init__(self, provider: SegmentProvider | None, workers: int):
        self.provider, self.workers = provider, workers
        self._stopped = False
        self._futures: dict = {}

    def stop(self) -> None:
        self._stopped = True
        for f in self._futures:
            f.cancel()

    def run(self, pending) -> Iterator[Outcome]:
        for sid, job in pending:  # failures known before any work (duplicates)
            if not isinstance(job, SlideJob):
                yield sid, "error", job
                if self._stopped:
                    return
        jobs = [(sid, j) for sid, j in pending if isinstance(j, SlideJob)]
        threads = max(1, encode_threads() // self.workers)  # the CPUs are shared out: no oversubscription
        import multiprocessing as mp                           # only with --workers N: not loaded otherwise
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"),
                                 initializer=_worker_init, initargs=(threads,)) as ex:
            self._futures = futs = {ex.submit(run_job_safe, j, self.provider): sid for sid, j in jobs}
            nxt = slides_ahead(self.workers)  # jobs start in submission order: keep the next ones coming
            for fut in as_completed(futs):
                if nxt < len(jobs) and not self._stopped:
                    read_ahead(jobs[nxt][1].files, props=False)   # each worker opens its own slides
                    nxt += 1
                if fut.cancelled():
                    continue
                try:
                    status, res = fut.result()
                except Exception as e:  # noqa: BLE001 - worker crashed (e.g. killed for memory)
                    status, res = "error", e
                yield futs[fut], status, res


def make_executor(options, provider: SegmentProvider | None, n_pending: int, expected: Expected, warn):
    """The executor ``options`` ask for: Dask (``dask_scheduler`` / ``dask_local``), a process pool
    (``workers`` > 1, when the provider can be sent to the workers) or serial."""
    if options.dask_scheduler or options.dask_local:
        from clam2sam.convert.dask_executor import DaskExecutor

        return DaskExecutor(options.dask_scheduler, options.dask_local, provider, expected)
    workers = min(options.workers, max(n_pending, 1))
    if workers > 1 and provider is not None:
        try:
            pickle.dumps(provider)
        except Exception:  # noqa: BLE001
            warn("the segment provider cannot be sent to worker processes: converting with --workers 1")
            workers = 1
    return SerialExecutor(provider, expected) if workers <= 1 else PoolExecutor(provider, workers)

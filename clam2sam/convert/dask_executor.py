"""Run ``clam2sam convert`` on a Dask distributed cluster: one task per slide.

Selected with ``ConvertOptions(dask_scheduler="tcp://HOST:PORT")`` (an existing cluster) or
``ConvertOptions(dask_local=N)`` (a ``LocalCluster`` of N worker processes, one thread each, for this run).

What runs where:

- The client (the ``clam2sam convert`` process) discovers the slides, holds the store lock, books every
  outcome with the same :class:`~clam2sam.convert.booking.Booking` as the other executors, drives the progress
  callback as futures complete, and consolidates metadata at the end (``StoreWriter.finalize``, called by
  :func:`clam2sam.convert.cohort.convert_cohort`).
- Each task runs :func:`clam2sam.convert.slide_job.run_job_safe`, the single-process per-slide job, and writes
  only its own slide group (one shard per array), so no two writers ever touch one shard. The slide's
  ``complete`` attr is written last: a worker killed mid-slide leaves a visibly incomplete group that the
  next run (same command) redoes.
- Workers must see ARCHIVE, the slide files and ``--out`` at the same paths as the client (shared
  filesystem) and run the same clam2sam version.

Resume, ``--skip-errors`` and stop-at-first-failure behave as in the ``--workers`` process pool: at most
about two tasks per worker thread are in flight; after the first failure without ``skip_errors`` nothing
new is submitted and the in-flight slides that finish are kept and booked.
"""
from __future__ import annotations

import contextlib
import time
import uuid
from typing import Iterator

from clam2sam.convert.slide_job import SlideJob, run_job_safe, with_expected
from clam2sam.errors import Clam2SamError, UsageError
from clam2sam.ids import slide_key

CONNECT_TIMEOUT_S = 30
_WINDOW_REFRESH_S = 5.0


class WorkerLostError(Clam2SamError):
    """The Dask worker converting a slide died (killed, out of memory) or the task could not run."""


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, n_local: int | None = None) -> Iterator:
    """A distributed Client connected to ``scheduler``, or to a fresh LocalCluster of ``n_local`` processes.

    The LocalCluster (and its workers) is shut down on exit; an external cluster is left running.

    Raises:
        UsageError: the scheduler cannot be reached.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as e:
            raise UsageError(f"cannot reach the Dask scheduler at {scheduler} ({type(e).__name__}: {e})",
                             fix="start one with `dask scheduler` and workers with `dask worker tcp://HOST:8786`, "
                                 "or check --dask-scheduler") from e
        try:
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(n_workers=int(n_local), threads_per_worker=1, processes=True,
                           dashboard_address=":0")  # any free port: never clashes with a running cluster
    try:
        client = Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def _task_error(sid: str, exc: BaseException) -> Clam2SamError:
    if isinstance(exc, Clam2SamError):
        return exc
    name = type(exc).__name__
    if name == "KilledWorker":
        return WorkerLostError(
            f"the Dask worker converting this slide died ({exc}); its slide group is left incomplete", slide=sid,
            fix="re-run the same command to redo it; if workers run out of memory give them more "
                "(dask worker --memory-limit) or fewer threads (--nthreads 1)")
    return WorkerLostError(f"the Dask task failed ({name}: {exc})", slide=sid,
                           fix="check the worker logs; re-run the same command to resume")


class _Window:
    """How many tasks to keep in flight: about two per worker thread (re-read every few seconds)."""

    def __init__(self, client):
        self.client = client
        self.value = 2
        self.t = -1e9

    def __call__(self) -> int:
        now = time.monotonic()
        if now - self.t > _WINDOW_REFRESH_S:
            try:
                self.value = max(2, 2 * sum(self.client.nthreads().values()))
            except Exception:  # noqa: BLE001 - keep the previous value on a transient scheduler error
                pass
            self.t = now
        return self.value


class DaskExecutor:
    """Converts the pending slides on Dask, yielding each outcome as its future completes (the executor
    interface of :mod:`clam2sam.convert.executors`).

    Args:
        scheduler: ``tcp://HOST:PORT`` of a running cluster, or None with ``n_local``.
        n_local: start a LocalCluster of this many worker processes for the run.
        provider: optional segment provider (sent once to every worker with ``scatter``).
        expected: ``() -> (feature_dim, feature_dtype)`` of the store so far, given to each job submitted.

    Raises (from ``run``):
        UsageError: the scheduler cannot be reached, or the provider cannot be sent to workers.
    """

    def __init__(self, scheduler: str | None, n_local: int | None, provider, expected):
        self.scheduler, self.n_local, self.provider, self.expected = scheduler, n_local, provider, expected
        self._stopped = False

    def stop(self) -> None:
        """Submit nothing more; the slides in flight finish and come back."""
        self._stopped = True

    def run(self, pending) -> Iterator[tuple]:
        from distributed import as_completed

        jobs = []
        for sid, job in pending:  # failures known before any work (duplicates) come first, as with --workers
            if isinstance(job, SlideJob):
                jobs.append((sid, job))
                continue
            yield sid, "error", job
            if self._stopped:
                return
        if not jobs:
            return
        with dask_client(self.scheduler, self.n_local) as client:
            prov = None
            if self.provider is not None:
                try:
                    prov = client.scatter(self.provider, broadcast=True, hash=False)
                except Exception as e:  # noqa: BLE001 - unpicklable provider
                    raise UsageError(f"the segment provider cannot be sent to Dask workers ({type(e).__name__}: "
                                     f"{e})", fix="run without --dask-scheduler/--dask-local") from e
            window = _Window(client)
            todo = iter(jobs)
            in_flight: dict[str, str] = {}   # future key -> slide id
            ac = as_completed(loop=client.loop)
            run_id = uuid.uuid4().hex[:8]

            def top_up() -> None:
                while len(in_flight) < window():
                    nxt = next(todo, None)
                    if nxt is None:
                        return
                    sid, job = nxt
                    fut = client.submit(run_job_safe, with_expected(job, self.expected), prov,
                                        key=f"clam2sam-convert-{run_id}-{slide_key(sid)}", pure=False)
                    in_flight[fut.key] = sid
                    ac.add(fut)

            top_up()
            try:
                for fut in ac:
                    sid = in_flight.pop(fut.key)
                    try:
                        status, res = fut.result()
                    except Exception as e:  # noqa: BLE001 - KilledWorker, lost deserialisation, ...
                        status, res = "error", _task_error(sid, e)
                    fut.release()
                    yield sid, status, res
                    if not self._stopped:
                        top_up()   # after a stop: submit nothing more; finish and keep what is in flight
            except BaseException:
                # interrupted: forget the queued tasks (running ones cannot be stopped and finish their slide)
                with contextlib.suppress(Exception):
                    client.cancel(list(ac.futures), force=True)
                raise

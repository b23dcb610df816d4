"""Threads for the store's Blosc work: how many, and one thread pool per process.

``CLAM2SAM_THREADS`` overrides the count everywhere (compression in convert, decompression when reading
bags); otherwise the CPUs this process may run on. A pool belongs to the process that made it: after a
fork (``--workers``, DataLoader workers) the child makes its own, since its parent's threads do not exist
there.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

ENV = "CLAM2SAM_THREADS"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask; the CPU count where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def env_threads() -> int | None:
    """``CLAM2SAM_THREADS`` as a positive int, or None when unset or not a number."""
    v = os.environ.get(ENV)
    if not v:
        return None
    try:
        return max(1, int(v))
    except ValueError:
        return None


class ProcessPool:
    """A ThreadPoolExecutor of ``n`` threads owned by the current process (re-made after a fork, or when
    ``n`` changes)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self._lock = threading.Lock()
        self._state: tuple[int, int, ThreadPoolExecutor] | None = None   # (pid, threads, pool)

    @property
    def owner_pid(self) -> int | None:
        return None if self._state is None else self._state[0]

    def get(self, n: int) -> ThreadPoolExecutor:
        with self._lock:
            pid = os.getpid()
            st = self._state
            if st is None or st[0] != pid or st[1] != n:
                if st is not None and st[0] == pid:
                    st[2].shutdown(wait=False)
                st = self._state = (pid, n, ThreadPoolExecutor(max_workers=n, thread_name_prefix=self.prefix))
            return st[2]

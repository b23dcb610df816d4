"""Thread counts and per-process pools of the store's Blosc work."""
from __future__ import annotations

import multiprocessing
import os

from clam2sam.store import fast_write
from clam2sam.threads import ProcessPool, env_threads, usable_cpus


def test_env_threads(monkeypatch):
    monkeypatch.delenv("CLAM2SAM_THREADS", raising=False)
    assert env_threads() is None and fast_write.encode_threads() == usable_cpus() >= 1
    monkeypatch.setenv("CLAM2SAM_THREADS", "3")
    assert env_threads() == 3 and fast_write.encode_threads() == 3
    monkeypatch.setenv("CLAM2SAM_THREADS", "0")
    assert env_threads() == 1
    monkeypatch.setenv("CLAM2SAM_THREADS", "many")
    assert env_threads() is None


_POOL = ProcessPool("t")   # module level: a forked child inherits it, as the store's pools are inherited


def _owner_in_child():
    _POOL.get(2).submit(int).result()   # usable in the child: its own threads
    return _POOL.owner_pid


def test_process_pool_is_per_process_and_per_size():
    a = _POOL.get(2)
    assert _POOL.get(2) is a and _POOL.owner_pid == os.getpid()
    b = _POOL.get(3)
    assert b is not a and b._max_workers == 3
    with multiprocessing.get_context("fork").Pool(1) as p:
        child_owner = p.apply(_owner_in_child)
    assert child_owner not in (None, os.getpid())
    assert _POOL.owner_pid == os.getpid() and _POOL.get(3) is b   # the parent's pool is untouched

"""The store's write lock: ``<store>/.clam2sam.lock``, an OS-level lock the kernel releases when its holder dies.

The lock is ``flock(2)`` on the lock file, taken with the ``filelock`` package (:func:`filelock.lock_descriptor`):
a conversion killed by SIGKILL, SIGTERM, a crash or an out-of-memory kill holds nothing afterwards, so a plain
re-run resumes. The file also holds a record of the holder (pid, host, start time), shown when a second run is
refused.

Two cases cannot be decided by the OS lock alone, and are refused unless ``--break-stale-lock`` is given:

* the lock file was left by a process on **another host**: on file systems whose locks do not reach across hosts
  (NFS mounted with ``nolock`` or ``local_lock=all``, some FUSE / SMB / object-store mounts), that process may still
  be running;
* the file system does not support ``flock`` at all (``ENOSYS``/``ENOLCK``/``EOPNOTSUPP``): the lock then falls back
  to the record alone (created atomically); a record of a dead process on this host is cleared automatically, any
  other record needs the flag.
"""
from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import socket
from pathlib import Path

from clam2sam.errors import StoreLockedError

LOCK_NAME = ".clam2sam.lock"
# errors of flock() that mean "this file system has no working locks" (not "someone holds it")
NO_FLOCK_ERRNOS = frozenset({errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL})
BREAK_FIX = ("if no conversion into this store is running on any host, re-run with --break-stale-lock "
             "(the store itself stays valid)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parse(text: str) -> dict | None:
    try:
        info = json.loads(text)
    except ValueError:
        return None
    return info if isinstance(info, dict) and "pid" in info and "hostname" in info else None


def read_lock(path: Path) -> dict | None:
    """The lock record ``{"pid", "hostname", "created"}``; None when absent or unreadable (empty, not JSON)."""
    try:
        return _parse((Path(path) / LOCK_NAME).read_text())
    except (OSError, UnicodeDecodeError):
        return None


def lock_is_stale(info: dict) -> bool:
    """A record is stale when its holder ran on this host and that pid no longer exists."""
    try:
        pid = int(info.get("pid", -1))
    except (TypeError, ValueError):
        return False
    return info.get("hostname") == socket.gethostname() and pid > 0 and not _pid_alive(pid)


def _holder(info: dict | None) -> str:
    if not info:
        return "holder unknown: the lock record is empty or unreadable"
    return f"pid {info.get('pid')} on {info.get('hostname')} since {info.get('created')}"


def _payload() -> str:
    return json.dumps({"pid": os.getpid(), "hostname": socket.gethostname(),
                       "created": _dt.datetime.now(_dt.timezone.utc).isoformat()})


class StoreLock:
    """A held store lock; :meth:`release` (or process death) frees it."""

    def __init__(self, path: Path, fd: int | None):
        self.path = path          # the lock file
        self.fd = fd              # None: record-only lock (no flock on this file system)

    def release(self) -> None:
        """Remove the lock file (only while it is still ours) and free the OS lock."""
        try:
            if self.fd is not None:
                try:
                    if os.path.samestat(os.fstat(self.fd), os.stat(self.path)):
                        os.unlink(self.path)  # still holding the flock: nobody can have taken it meanwhile
                except OSError:
                    pass
            else:
                info = read_lock(self.path.parent)
                if info and info.get("pid") == os.getpid() and info.get("hostname") == socket.gethostname():
                    self.path.unlink(missing_ok=True)
        finally:
            if self.fd is not None:
                try:
                    _filelock().unlock_descriptor(self.fd)
                except OSError:
                    pass
                os.close(self.fd)
                self.fd = None


def _filelock():
    """The filelock package, imported when a lock is taken (~80 ms: not on the path of `inspect` or `--help`)."""
    import filelock

    return filelock


def lock_descriptor(fd: int, *, blocking: bool) -> bool:
    """``flock(fd, LOCK_EX[|LOCK_NB])`` through filelock; False when another open file holds it."""
    return _filelock().lock_descriptor(fd, blocking=blocking)


def _flock_or_none(lock: Path, break_stale: bool) -> StoreLock | None:
    """Take the OS lock; None when the file system has no working flock. Raises StoreLockedError when held."""
    for _ in range(5):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            try:
                got = lock_descriptor(fd, blocking=False)
            except OSError as e:
                if e.errno in NO_FLOCK_ERRNOS:
                    os.close(fd)
                    return None
                raise
            if not got:
                info = read_lock(lock.parent)
                raise StoreLockedError(f"store is being written by another process ({_holder(info)})", path=lock,
                                       fix="wait for it to finish, or write to another --out")
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(lock))
            except FileNotFoundError:
                same = False
            if not same:  # the holder released and removed the file between our open and our lock: retry
                os.close(fd)
                continue
            # read and rewrite the record through this descriptor only: on NFS, flock is emulated with POSIX
            # locks, which closing *any* descriptor of the file would release
            info = _parse(os.pread(fd, 1 << 16, 0).decode("utf-8", "replace"))  # left by an earlier holder
            if info and info.get("hostname") != socket.gethostname() and not break_stale:
                raise StoreLockedError(
                    f"store lock was taken on another host and never released ({_holder(info)}); locks of "
                    "this file system may not reach across hosts, so that conversion may still be running",
                    path=lock, fix=BREAK_FIX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, _payload().encode(), 0)
            return StoreLock(lock, fd)
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            raise
    raise StoreLockedError("the store lock keeps being replaced by other processes", path=lock,
                           fix="wait for the other conversions to finish")


def _create(lock: Path, payload: str) -> None:
    """Create ``lock`` holding ``payload`` in one step: written aside, then hard-linked into place (the link
    fails when the lock exists), so no reader ever sees an empty lock. Falls back to O_EXCL where the file
    system has no hard links. Raises FileExistsError when the lock exists."""
    tmp = lock.with_name(f"{lock.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(payload)
        try:
            os.link(tmp, lock)
            return
        except FileExistsError:
            raise
        except OSError:  # no hard links here (some network / FUSE file systems)
            pass
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(payload)
    finally:
        tmp.unlink(missing_ok=True)


def _record_lock(path: Path, lock: Path, break_stale: bool) -> StoreLock:
    """The lock where flock does not work: the record file alone, created atomically."""
    for _ in range(2):
        try:
            _create(lock, _payload())
            return StoreLock(lock, None)
        except FileExistsError:
            info = read_lock(path)
            if info is not None and lock_is_stale(info):  # its holder is known dead: this host, pid gone
                lock.unlink(missing_ok=True)
                continue
            if break_stale and (info is None or info.get("hostname") != socket.gethostname()):
                lock.unlink(missing_ok=True)
                continue
            if info is None:
                raise StoreLockedError(
                    "store lock file is unreadable (empty or not a lock record), so its holder is unknown, and this "
                    "file system has no working flock to tell whether it is held", path=lock, fix=BREAK_FIX)
            if info.get("hostname") != socket.gethostname():
                raise StoreLockedError(
                    f"store is locked by a process on another host ({_holder(info)}) and this file system has no "
                    "working flock to tell whether it still runs", path=lock, fix=BREAK_FIX)
            raise StoreLockedError(f"store is being written by another process ({_holder(info)})", path=lock,
                                   fix="wait for it to finish, or write to another --out")
    raise StoreLockedError("could not acquire the store lock", path=lock)  # pragma: no cover


def acquire_lock(path: Path, *, break_stale: bool = False) -> StoreLock:
    """Take the store's write lock (creating the store folder when needed).

    Args:
        path: the store folder.
        break_stale: take over a lock record that cannot be verified (left on another host, or on a file system
            without flock); a lock held by a live process on this host is never broken.

    Raises:
        StoreLockedError: a live process holds it, or its holder cannot be verified and ``break_stale`` is False.
        OSError: the folder or lock file cannot be created (read-only file system, permissions, ...).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK_NAME
    held = _flock_or_none(lock, break_stale)
    return held if held is not None else _record_lock(path, lock, break_stale)

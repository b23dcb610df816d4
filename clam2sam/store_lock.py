"""The store's write lock: ``<store>/.clam2sam.lock`` with the holder's pid, host and start time."""
from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from pathlib import Path

from clam2sam.errors import StoreLockedError

LOCK_NAME = ".clam2sam.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock(path: Path) -> dict | None:
    """The lock's ``{"pid", "hostname", "created"}``; None when absent or unreadable (empty, not JSON)."""
    p = Path(path) / LOCK_NAME
    try:
        info = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "pid" in info and "hostname" in info else None


def lock_is_stale(info: dict) -> bool:
    """A lock is stale when its holder ran on this host and that pid no longer exists."""
    try:
        pid = int(info.get("pid", -1))
    except (TypeError, ValueError):
        return False
    return info.get("hostname") == socket.gethostname() and pid > 0 and not _pid_alive(pid)


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


def acquire_lock(path: Path, *, break_stale: bool = False) -> Path:
    """Create ``<store>/.clam2sam.lock`` atomically, with its content (see ``_create``).

    Raises:
        StoreLockedError: another live process holds it, or a stale lock exists and ``break_stale`` is False.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK_NAME
    payload = json.dumps({"pid": os.getpid(), "hostname": socket.gethostname(),
                          "created": _dt.datetime.now(_dt.timezone.utc).isoformat()})
    for _ in range(2):
        try:
            _create(lock, payload)
        except FileExistsError:
            info = read_lock(path)
            if info is None and lock.exists():  # e.g. emptied by a crash of an older version while taking it
                if break_stale:
                    lock.unlink(missing_ok=True)
                    continue
                raise StoreLockedError(
                    "store lock file is unreadable (empty or not a lock record), so its holder is unknown", path=lock,
                    fix="if no conversion is writing this store, re-run with --break-stale-lock to clear it")
            info = info or {}
            holder = f"pid {info.get('pid')} on {info.get('hostname')} since {info.get('created')}"
            if lock_is_stale(info):
                if break_stale:
                    lock.unlink(missing_ok=True)
                    continue
                raise StoreLockedError(
                    f"store is locked by a process that no longer runs ({holder})", path=lock,
                    fix="re-run with --break-stale-lock to clear it (the store itself stays valid)")
            raise StoreLockedError(f"store is being written by another process ({holder})", path=lock,
                                   fix="wait for it to finish, or write to another --out")
        return lock
    raise StoreLockedError("could not acquire the store lock", path=lock)  # pragma: no cover

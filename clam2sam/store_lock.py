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
    p = Path(path) / LOCK_NAME
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, ValueError):
        return None


def lock_is_stale(info: dict) -> bool:
    """A lock is stale when its holder ran on this host and that pid no longer exists."""
    return info.get("hostname") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1)))


def acquire_lock(path: Path, *, break_stale: bool = False) -> Path:
    """Create ``<store>/.clam2sam.lock`` atomically (O_EXCL).

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
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            info = read_lock(path) or {}
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
        with os.fdopen(fd, "w") as f:
            f.write(payload)
        return lock
    raise StoreLockedError("could not acquire the store lock", path=lock)  # pragma: no cover

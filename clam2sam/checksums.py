"""File size + sha256 of source files, computed with a large buffer (hashlib releases the GIL, so a
background thread overlaps hashing with reading and writing)."""
from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

_BUF = 8 << 20  # 8 MiB
_POOL: ThreadPoolExecutor | None = None


def file_digest(path: str | Path) -> dict:
    """``{"size": bytes, "sha256": hex}`` of one file, read with an 8 MiB buffer."""
    h = hashlib.sha256()
    buf = bytearray(_BUF)
    view = memoryview(buf)
    size = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            size += n
    return {"size": size, "sha256": h.hexdigest()}


def describe_sources(sources: list[tuple[str, Path]], *, checksums: bool = True) -> list[dict]:
    """``[{"role", "path", "size", "sha256"}]`` (sha256 None when ``checksums`` is False)."""
    out = []
    for role, p in sources:
        d = file_digest(p) if checksums else {"size": Path(p).stat().st_size, "sha256": None}
        out.append({"role": role, "path": str(Path(p).resolve()), **d})
    return out


def describe_sources_async(sources: list[tuple[str, Path]], *, checksums: bool = True) -> Future:
    """Start :func:`describe_sources` on a background thread; ``.result()`` gives the list."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clam2sam-sha256")
    return _POOL.submit(describe_sources, list(sources), checksums=checksums)

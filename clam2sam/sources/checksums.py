"""File size + sha256 of source files, computed with a large buffer (hashlib releases the GIL, so a
background thread overlaps hashing with reading and writing)."""
from __future__ import annotations

import hashlib
import os
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


CROSS_CHECK_NOTE = ("not hashed: a cross-check only (row count and sample rows compared with the h5 features, "
                    "which are hashed); --checksums all hashes it too")


def describe_sources(sources: list[tuple[str, Path]], *, checksums: bool = True,
                     cross_check: tuple[str, ...] = ()) -> list[dict]:
    """``[{"role", "path", "size", "sha256"}]`` (sha256 None when ``checksums`` is False, and for the roles in
    ``cross_check``: files whose content is only compared, not stored, e.g. a CLAM .pt beside its h5)."""
    out = []
    for role, p in sources:
        if checksums and role not in cross_check:
            d = file_digest(p)
        else:
            d = {"size": Path(p).stat().st_size, "sha256": None}
            if checksums:
                d["sha256_note"] = CROSS_CHECK_NOTE
        out.append({"role": role, "path": str(Path(p).resolve()), **d})
    return out


_PREFETCH: ThreadPoolExecutor | None = None


def prefetch(paths, spans=(), before=None) -> Future | None:
    """Ask the kernel to read these files into the page cache (``POSIX_FADV_WILLNEED``), from a background
    thread: the next slide's inputs come off the disk while this slide is compressed, and a slow or throttled
    disk never stalls the caller (the advice can block until the reads are queued). Best effort, never raises.

    Args:
        paths: files read in full.
        spans: ``[(path, "head" | "middle" | "tail", nbytes)]``: parts of files of which a conversion reads
            only a few blocks (a CLAM ``.pt`` cross-checked at its first, middle and last rows). Their small
            reads would otherwise wait behind the whole read-ahead queue, one round trip each.
        before: called first on the same thread (e.g. opening the slide with OpenSlide, whose small
            reads must not queue behind this slide's own read-ahead); its errors are ignored.
    """
    global _PREFETCH
    if getattr(os, "posix_fadvise", None) is None:
        return None
    if _PREFETCH is None:
        _PREFETCH = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clam2sam-prefetch")
    return _PREFETCH.submit(_before_then_advise, before, list(paths), list(spans))


def _before_then_advise(before, paths, spans) -> None:
    if before is not None:
        try:
            before()
        except Exception:  # noqa: BLE001 - best effort: the caller does the work itself if this failed
            pass
    _advise_willneed(paths, spans)


PREFETCH_WINDOW = 512 << 10   # bytes per WILLNEED call (see _advise_willneed)


def _span(where: str, nbytes: int, size: int) -> tuple[int, int]:
    """(offset, length) of a span of a file of ``size`` bytes."""
    if where == "head":
        return 0, min(nbytes, size)
    if where == "tail":
        return max(0, size - nbytes), min(nbytes, size)
    return max(0, size // 2 - nbytes // 2), min(nbytes, size)          # middle


def _advise_willneed(paths, spans=()) -> None:
    """Advise WILLNEED over each whole file (and the given spans), one window at a time: Linux clamps one
    call to the device's read-ahead size (``max(read_ahead_kb, max_sectors_kb)``; 8 MiB of a 50 MB h5 on the
    development VM, as fincore showed), so a single whole-file call would prefetch only the head of each
    file. 512 KiB windows stay under every common clamp; each call only queues reads (microseconds when the
    pages are cached)."""
    todo = [(p, None) for p in paths] + [(p, (w, n)) for p, w, n in spans]
    for p, span in todo:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            size = os.fstat(fd).st_size
            start, length = (0, size) if span is None else _span(span[0], span[1], size)
            for off in range(start, start + length, PREFETCH_WINDOW):
                os.posix_fadvise(fd, off, min(PREFETCH_WINDOW, start + length - off), os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def describe_sources_async(sources: list[tuple[str, Path]], *, checksums: bool = True,
                           cross_check: tuple[str, ...] = ()) -> Future:
    """Start :func:`describe_sources` on a background thread; ``.result()`` gives the list."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clam2sam-sha256")
    return _POOL.submit(describe_sources, list(sources), checksums=checksums, cross_check=cross_check)
